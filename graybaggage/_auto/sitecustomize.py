"""``graybaggage run``'s start-up hook: OpenTelemetry auto-instrumentation with the graybaggage distro.

``graybaggage run`` puts this folder first on ``PYTHONPATH``, so Python imports this module at start-up, in
the program and in every Python program it starts. It runs OpenTelemetry's own ``initialize()`` (what
``opentelemetry-instrument`` runs) with ``OTEL_PYTHON_DISTRO=graybaggage`` set only while it runs, unless the
user chose a distro. The variable does not stay in the environment: every variable there costs each
``requests`` call a little (requests scans ``os.environ`` for proxy settings several times per call).
While OpenTelemetry initialises, this folder is off ``PYTHONPATH``, so a subprocess started by an
instrumentation at that moment does not initialise again.
"""
import os


def _start() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.environ.get("PYTHONPATH")
    chosen = os.environ.get("OTEL_PYTHON_DISTRO")
    if path is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in path.split(os.pathsep) if p != here)
    if chosen is None:
        os.environ["OTEL_PYTHON_DISTRO"] = "graybaggage"
    try:
        from graybaggage import _status

        _status.state.switched_on_by = "graybaggage run"
        try:
            from opentelemetry.instrumentation.auto_instrumentation import initialize
        except ImportError:  # opentelemetry-instrumentation 0.51b0 (the oldest supported) does not export it:
            os.environ.setdefault("PYTHONPATH", "")  # there importing its sitecustomize runs initialize() once
            import opentelemetry.instrumentation.auto_instrumentation.sitecustomize  # noqa: F401
        else:
            initialize()  # logs and swallows its own errors: the program always starts
    except Exception:  # noqa: BLE001 - e.g. OpenTelemetry missing: start the program uninstrumented, say why
        import logging

        logging.getLogger("graybaggage").warning("graybaggage: auto-instrumentation failed to start", exc_info=True)
    finally:
        if chosen is None:
            os.environ.pop("OTEL_PYTHON_DISTRO", None)
        if path is not None:
            os.environ["PYTHONPATH"] = path


_start()
