// Package ext stands in for Traefik's nested module github.com/traefik/traefik/dynamic/ext
// (pkg/config/dynamic/ext), which the Go module proxy does not serve and which the module
// zip of traefik/v3 leaves out. Traefik embeds these two structs inline in its dynamic
// configuration; the open-source build keeps them empty.
package ext

// HTTP is embedded in dynamic.HTTPConfiguration.
type HTTP struct{}

// Router is embedded in dynamic.Router.
type Router struct{}
