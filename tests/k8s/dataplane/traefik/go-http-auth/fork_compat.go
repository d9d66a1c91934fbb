package auth

// Added by tests/k8s/dataplane/build.sh to github.com/abbot/go-http-auth v0.4.0: the two
// functions Traefik uses from its fork (github.com/containous/go-http-auth, a pseudo-version
// the module proxy refuses). Only Traefik's basicAuth/digestAuth middlewares call them; the
// test data plane uses neither.

import "net/http"

// CheckSecret reports whether password matches the hashed secret (htpasswd formats), as
// BasicAuth.CheckAuth compares them.
func CheckSecret(password, secret string) bool {
	compare := compareFuncs[0].compare
	for _, cmp := range compareFuncs[1:] {
		if len(secret) >= len(cmp.prefix) && secret[:len(cmp.prefix)] == cmp.prefix {
			compare = cmp.compare
			break
		}
	}
	return compare([]byte(secret), []byte(password)) == nil
}

// RequireAuthStale asks the client to authenticate again (the fork marks the nonce stale).
func (a *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) {
	a.RequireAuth(w, r)
}
