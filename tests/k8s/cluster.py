"""A real Kubernetes control plane on loopback, for tests (no pytest dependency).

    from tests.k8s.cluster import ControlPlane, ensure_binaries
    cp = ControlPlane(ensure_binaries())
    cp.start()            # etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
    ... cp.kubeconfig ...
    cp.stop()

Everything listens on 127.0.0.1 on free ports; every process runs in its own process
group (own session) and logs to <workdir>/logs/<name>.log.  One fake Node ("kwok-node-0",
annotated kwok.x-k8s.io/node=fake) is managed by kwok, so pods get scheduled and become
Ready without a kubelet.  Pod and Service IPs are fake 10.x values: never dial them.

Needs only the standard library plus the ``cryptography`` package (for the certificates).

Environment:
  GRAYBAGGAGE_K8S_BIN=/dir           use prebuilt binaries in /dir (skip build.sh)
  GRAYBAGGAGE_K8S_CACHE=/dir         build.sh cache root (default ~/.cache/graybaggage/k8s)
  GRAYBAGGAGE_TEST_KUBECONFIG=/path  handled by plugin.py / ExternalCluster: use an existing
                                     cluster; nothing is built or started.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"
KWOK_STAGES_DIR = HERE / "kwok-stages"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "kwok")

NODE_NAME = "kwok-node-0"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/17"   # kwok's fake pods; the real node (dataplane.py) uses 10.244.128.0/24

_PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _log(msg: str) -> None:
    print(f"[k8s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# binaries
# --------------------------------------------------------------------------------------

class BuildError(RuntimeError):
    pass


def missing_binaries(bin_dir: str | os.PathLike) -> list[str]:
    d = Path(bin_dir)
    return [b for b in BINARIES if not os.access(d / b, os.X_OK)]


def ensure_binaries(stream: Callable[[str], None] | None = None) -> str:
    """Return a directory holding all control-plane binaries.

    ``GRAYBAGGAGE_K8S_BIN`` wins if set (it must contain every binary).  Otherwise runs
    build.sh, which returns at once on a warm cache and compiles everything (25-45 min
    on 2 cores) on a cold one.  build.sh's progress lines are passed to ``stream``
    (default: this process's stderr) as they come.
    """
    prebuilt = os.environ.get("GRAYBAGGAGE_K8S_BIN")
    if prebuilt:
        miss = missing_binaries(prebuilt)
        if miss:
            raise BuildError(f"GRAYBAGGAGE_K8S_BIN={prebuilt} lacks: {', '.join(miss)}")
        return str(Path(prebuilt).resolve())
    stream = stream or (lambda line: print(line, file=sys.stderr, end="", flush=True))
    proc = subprocess.Popen(
        ["bash", str(BUILD_SH)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    # build.sh writes progress to stderr and the bin dir to stdout; stdout is tiny, so read
    # stderr line by line first and stdout afterwards.
    assert proc.stderr is not None and proc.stdout is not None
    tail: list[str] = []
    for line in proc.stderr:
        stream(line)
        tail = (tail + [line])[-60:]
    out = proc.stdout.read()
    rc = proc.wait()
    if rc != 0:
        raise BuildError(f"tests/k8s/build.sh failed (exit {rc}):\n{''.join(tail)}")
    bin_dir = out.strip().splitlines()[-1]
    miss = missing_binaries(bin_dir)
    if miss:
        raise BuildError(f"build.sh returned {bin_dir} but it lacks: {', '.join(miss)}")
    return bin_dir


# --------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------

def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("tests/k8s needs the 'cryptography' package (pip install cryptography)") from e
    return x509, hashes, serialization, ec, rsa, ExtendedKeyUsageOID, NameOID


def _write_key(path: Path, key) -> None:
    _, _, serialization, *_ = _crypto()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _pem(cert) -> bytes:
    _, _, serialization, *_ = _crypto()
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclasses.dataclass
class _CA:
    cert: object
    key: object
    cert_file: Path
    key_file: Path

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)


def _new_ca(directory: Path, name: str, cn: str) -> _CA:
    x509, hashes, _, ec, _, _, NameOID = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(_pem(cert))
    _write_key(key_file, key)
    return _CA(cert, key, cert_file, key_file)


def _issue(
    ca: _CA,
    directory: Path,
    name: str,
    cn: str,
    *,
    orgs: Sequence[str] = (),
    ips: Iterable[str] = (),
    dns: Iterable[str] = (),
    server: bool = False,
    client: bool = False,
) -> tuple[Path, Path]:
    x509, hashes, _, ec, _, EKU, NameOID = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = ([EKU.SERVER_AUTH] if server else []) + ([EKU.CLIENT_AUTH] if client else [])
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(_pem(cert))
    _write_key(key_file, key)
    return cert_file, key_file


@dataclasses.dataclass(frozen=True)
class WebhookTLS:
    """TLS material for an admission webhook served at https://127.0.0.1:<port>.

    cert_file/key_file: server certificate (SAN IP:127.0.0.1, DNS:localhost) and key,
    ready for ``ssl.SSLContext.load_cert_chain``.  ca_file: the CA that signed it;
    ca_pem: its PEM bytes; ca_bundle: base64 of ca_pem, to paste into
    ``webhooks[].clientConfig.caBundle``.
    """

    cert_file: str
    key_file: str
    ca_file: str
    ca_pem: bytes
    ca_bundle: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def webhook_tls(directory: str | os.PathLike) -> WebhookTLS:
    """Create a fresh CA + server cert for 127.0.0.1 in ``directory`` (created if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = _new_ca(d, "webhook-ca", "graybaggage-webhook-ca")
    cert, key = _issue(ca, d, "webhook", "127.0.0.1", ips=["127.0.0.1"], dns=["localhost"], server=True)
    return WebhookTLS(str(cert), str(key), str(ca.cert_file), ca.pem, base64.b64encode(ca.pem).decode())


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):  # hold them all open so we get n distinct ports
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


def _set_pdeathsig() -> None:  # runs in the child before exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the test process
    except Exception:
        pass


def api_client_for(kubeconfig: str):
    """A ``kubernetes.client.ApiClient`` configured from ``kubeconfig`` (needs the kubernetes package)."""
    try:
        from kubernetes import client, config as kconfig
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("api_client() needs the 'kubernetes' package (pip install kubernetes)") from e
    cfg = client.Configuration()
    kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


class ControlPlaneError(RuntimeError):
    pass


@dataclasses.dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log_file: Path


# --------------------------------------------------------------------------------------
# the control plane
# --------------------------------------------------------------------------------------

class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on loopback."""

    is_external = False

    def __init__(self, bin_dir: str | os.PathLike, workdir: str | os.PathLike | None = None,
                 *, keep_workdir: bool = False):
        self.bin_dir = str(Path(bin_dir).resolve())
        miss = missing_binaries(self.bin_dir)
        if miss:
            raise ControlPlaneError(f"{self.bin_dir} lacks: {', '.join(miss)}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="graybaggage-k8s-"))
        self.keep_workdir = keep_workdir
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self.procs: list[_Proc] = []
        self.server = ""
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}
        self._ssl: ssl.SSLContext | None = None

    # ---------------- public API ----------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, bin dir first on PATH, no proxies."""
        return _child_env({
            "KUBECONFIG": self.kubeconfig,
            "PATH": self.bin_dir + os.pathsep + os.environ.get("PATH", ""),
        })

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bin_dir, "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        cp = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.env,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise subprocess.CalledProcessError(cp.returncode, cmd, cp.stdout, cp.stderr)
        return cp

    def api_client(self):
        return api_client_for(self.kubeconfig)

    def webhook_tls(self, directory: str | os.PathLike | None = None) -> WebhookTLS:
        if directory is None:
            directory = tempfile.mkdtemp(prefix="webhook-", dir=self.workdir)
        return webhook_tls(directory)

    def start(self, timeout: float = 180) -> "ControlPlane":
        t0 = time.monotonic()
        deadline = t0 + timeout
        for attempt in (1, 2):
            try:
                self._start(deadline, t0)
                break
            except ControlPlaneError as e:
                # a free port picked here can be taken by someone else before our process
                # binds it: retry once with new ports
                if attempt == 1 and "address already in use" in str(e):
                    _log("a picked free port was taken before our process bound it; retrying with new ports")
                    self.stop_processes()
                    for sub in ("etcd", "logs"):
                        shutil.rmtree(self.workdir / sub, ignore_errors=True)
                    continue
                self._fail()
                raise
            except BaseException:
                self._fail()
                raise
        self.startup_seconds = round(time.monotonic() - t0, 2)
        _log(f"control plane ready in {self.startup_seconds}s at {self.server} "
             f"(kubeconfig {self.kubeconfig}, logs {self.logs})")
        return self

    def _fail(self) -> None:
        self._dump_logs()
        self.keep_workdir = True  # keep logs/certs for a post-mortem
        self.stop()
        _log(f"start-up failed; logs kept in {self.logs}")

    def stop(self, grace: float = 10) -> None:
        """Stop every process and remove the temp workdir (unless kept)."""
        self.stop_processes(grace)
        if self._own_workdir and not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_processes(self, grace: float = 10) -> None:
        """Stop newest first (kwok ... etcd last): SIGTERM the process group, wait up to
        ``grace`` s, then SIGKILL the group (also catches any grandchildren) and reap."""
        t0 = time.monotonic()
        for p in reversed(self.procs):
            self._signal(p, signal.SIGTERM)
            try:
                p.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _log(f"{p.name} ignored SIGTERM for {grace}s: SIGKILL")
            self._signal(p, signal.SIGKILL)
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _log(f"WARNING: {p.name} (pid {p.popen.pid}) did not exit after SIGKILL")
        if self.procs:
            _log(f"control plane stopped in {time.monotonic() - t0:.1f}s")
        self.procs.clear()

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------- REST helper (stdlib only) ----------------

    def request(self, method: str, path: str, body: dict | None = None, *,
                timeout: float = 10) -> tuple[int, dict | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ssl_context())
        )
        try:
            with opener.open(req, timeout=timeout) as r:
                status, raw = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read().decode()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    # ---------------- internals ----------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)
        _log(f"{what} (+{self.timings[what]}s)")

    def _start(self, deadline: float, t0: float) -> None:
        for d in (self.pki, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._ssl = None
        names = ["etcd_client", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok_node"]
        self.ports = dict(zip(names, _free_ports(len(names))))
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self._make_pki()
        self._write_kubeconfig()
        self._mark("certificates + kubeconfig written", t0)

        etcd_url = f"http://127.0.0.1:{self.ports['etcd_client']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn("etcd", [
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        self._wait("etcd /health", deadline, lambda: self._http_ok(etcd_url + "/health"))
        self._mark("etcd healthy", t0)

        pki = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            # front-proxy (aggregation) settings: without them every component logs
            # "missing content for CA bundle ... requestheader-client-ca-file" forever
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=true",  # lets /readyz, /livez, /version be read without credentials
            "--allow-privileged=true",
            # 127.0.0.1 may not be published as the kubernetes Service endpoint (loopback)
            "--endpoint-reconciler-type=none",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-priority-and-fairness=false",
            # namespace annotations that put a namespace's pods on the real data-plane node (dataplane.py)
            "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
            "--profiling=false",
            "--v=1",
        ])
        self._wait("kube-apiserver /readyz", deadline,
                   lambda: self.request("GET", "/readyz", timeout=3)[0] == 200)
        self._mark("kube-apiserver ready", t0)

        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]
        self._spawn("kube-controller-manager", common + [
            f"--secure-port={self.ports['kcm']}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            # true = one SA token per controller: ~3 s slower start-up, no benefit for tests
            "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
            "--concurrent-gc-syncs=5",
            # default 5s: the not-ready taint on the fresh node goes sooner
            "--node-monitor-period=1s",
        ])
        self._spawn("kube-scheduler", common + [
            f"--secure-port={self.ports['scheduler']}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
        ])
        stages = sorted(KWOK_STAGES_DIR.glob("*.yaml"))
        if not stages:
            raise ControlPlaneError(f"no kwok stage YAMLs in {KWOK_STAGES_DIR}")
        kwok_home = self.workdir / "kwok-home"  # keep a user's ~/.kwok/kwok.yaml out of it
        kwok_home.mkdir(exist_ok=True)
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}",
            # Node addresses point at loopback (a port nobody serves), so nothing ever
            # dials a non-loopback address even if a test asks for pod logs.
            "--node-ip=127.0.0.1",
            f"--node-port={self.ports['kwok_node']}",
            # without this kwok serves its fake kubelet API on 0.0.0.0:<node-port>
            f"--server-address=127.0.0.1:{self.ports['kwok_node']}",
            "--node-lease-duration-seconds=40",
            *[f"--config={s}" for s in stages],
        ], env={"HOME": str(kwok_home)})

        self._create_node()
        self._mark("fake node created", t0)
        self._wait(f"node {NODE_NAME} Ready", deadline, self._node_ready)
        self._mark("node Ready", t0)
        self._wait("ServiceAccount default/default", deadline,
                   lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200)
        self._mark("default ServiceAccount exists", t0)

    def _make_pki(self) -> None:
        d = self.pki
        ca = _new_ca(d, "ca", "graybaggage-test-ca")
        _issue(ca, d, "apiserver", "kube-apiserver",
               ips=["127.0.0.1", "10.0.0.1"],
               dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local"], server=True)
        _issue(ca, d, "admin", "admin", orgs=["system:masters"], client=True)
        fp = _new_ca(d, "front-proxy-ca", "graybaggage-front-proxy-ca")
        _issue(fp, d, "front-proxy-client", "front-proxy-client", client=True)
        # service-account signing key pair
        _, _, serialization, _, rsa, _, _ = _crypto()
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(d / "sa.key", sa)
        (d / "sa.pub").write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        (d / "tokens.csv").write_text(f'{self.admin_token},admin-token,admin-token,"system:masters"\n')
        (d / "tokens.csv").chmod(0o600)

    def _write_kubeconfig(self) -> None:
        b64 = lambda p: base64.b64encode((self.pki / p).read_bytes()).decode()  # noqa: E731
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "graybaggage", "cluster": {
                "server": self.server, "certificate-authority-data": b64("ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
            "contexts": [{"name": "graybaggage", "context": {
                "cluster": "graybaggage", "user": "admin", "namespace": "default"}}],
            "current-context": "graybaggage",
        }
        p = Path(self.kubeconfig)
        p.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML
        p.chmod(0o600)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log_file = self.logs / f"{name}.log"
        fh = open(log_file, "ab")
        try:
            popen = subprocess.Popen(
                [os.path.join(self.bin_dir, name), *args],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=_child_env(env),
                start_new_session=True,  # own session => own process group
                preexec_fn=_set_pdeathsig,
            )
        finally:
            fh.close()
        self.procs.append(_Proc(name, popen, log_file))
        _log(f"started {name} (pid {popen.pid}, log {log_file})")

    @staticmethod
    def _signal(p: _Proc, sig: int) -> None:
        try:
            os.killpg(p.popen.pid, sig)  # pgid == pid (start_new_session)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def _check_alive(self) -> None:
        for p in self.procs:
            rc = p.popen.poll()
            if rc is not None:
                raise ControlPlaneError(
                    f"{p.name} exited with code {rc} during start-up; last log lines:\n"
                    + _tail(p.log_file, 30))

    def _wait(self, what: str, deadline: float, cond: Callable[[], bool], interval: float = 0.2) -> None:
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if cond():
                    return
            except Exception as e:  # connection refused etc. while starting
                last_err = e
            time.sleep(interval)
        raise ControlPlaneError(f"timed out waiting for {what} (last error: {last_err!r})")

    @staticmethod
    def _http_ok(url: str) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2) as r:
            return r.status == 200

    def _create_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/role": "agent",
                    "node-role.kubernetes.io/agent": "",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                             "kubeletVersion": "fake", "kubeProxyVersion": "fake"},
            },
        }
        status, body = self.request("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node failed: HTTP {status}: {body}")

    def _node_ready(self) -> bool:
        status, body = self.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200 or not isinstance(body, dict):
            return False
        if body.get("spec", {}).get("taints"):
            # node.kubernetes.io/not-ready taint is removed by the node lifecycle controller
            return False
        conds = body.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def _dump_logs(self) -> None:
        for p in self.procs:
            _log(f"--- last lines of {p.log_file} ---\n{_tail(p.log_file, 15)}")


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class ExternalCluster:
    """An existing cluster (kind, minikube...) selected with GRAYBAGGAGE_TEST_KUBECONFIG.

    Nothing is built or started.  kubectl comes from GRAYBAGGAGE_K8S_BIN if set, else PATH.
    Admission webhooks served by the test process at https://127.0.0.1:<port> are NOT
    reachable from such an API server (it runs in a container/VM), so tests that need
    them must skip when ``is_external`` is true.
    """

    is_external = True
    startup_seconds = 0.0

    def __init__(self, kubeconfig: str):
        if not os.path.isfile(kubeconfig):
            raise ControlPlaneError(f"GRAYBAGGAGE_TEST_KUBECONFIG={kubeconfig} is not a file")
        self.kubeconfig = str(Path(kubeconfig).resolve())
        bin_dir = os.environ.get("GRAYBAGGAGE_K8S_BIN")
        if not bin_dir:
            k = shutil.which("kubectl")
            bin_dir = os.path.dirname(k) if k else ""
        self.bin_dir = bin_dir
        self.workdir = Path(tempfile.mkdtemp(prefix="graybaggage-k8s-ext-"))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        if self.bin_dir:
            env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        exe = os.path.join(self.bin_dir, "kubectl") if self.bin_dir else "kubectl"
        cmd = [exe, "--kubeconfig", self.kubeconfig, *args]
        cp = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.env,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise subprocess.CalledProcessError(cp.returncode, cmd, cp.stdout, cp.stderr)
        return cp

    def api_client(self):
        return api_client_for(self.kubeconfig)

    def webhook_tls(self, directory: str | os.PathLike | None = None) -> WebhookTLS:
        return webhook_tls(directory or tempfile.mkdtemp(prefix="webhook-", dir=self.workdir))

    def start(self, timeout: float = 0) -> "ExternalCluster":
        return self

    def stop(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":  # manual use: python -m tests.k8s.cluster  (Ctrl-C to stop)
    def _term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in the background by a script
    cp = ControlPlane(ensure_binaries(), keep_workdir=True)
    cp.start()
    print(f"export KUBECONFIG={cp.kubeconfig}")
    print(f"export PATH={cp.bin_dir}:$PATH")
    try:
        while True:  # not signal.pause(): a signal landing just before the pause() call would wake nothing
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()
