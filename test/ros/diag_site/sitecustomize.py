"""Test diagnostics (test_shutdown_output puts this folder on PYTHONPATH): a process that
dies of an uncaught exception names itself -- pid and full command line, the ``-c`` code
included -- before its traceback. Two CI runs showed a ``BrokenPipeError`` traceback at
``File "<string>", line 36, in <module>`` in a bring-up's Ctrl-C output from a process
none of our nodes is (our only ``-c`` child, the planning worker, is one line)."""
import os
import sys

_default = sys.excepthook


def _named(kind, value, tb):
    try:
        argv = getattr(sys, "orig_argv", sys.argv)
        sys.stderr.write(f"[uncaught in pid {os.getpid()} (parent {os.getppid()}): "
                         f"{' '.join(map(str, argv))[:3000]!r}]\n")
    except Exception:  # noqa: BLE001 -- never hide the traceback itself
        pass
    _default(kind, value, tb)


sys.excepthook = _named
