"""Process helpers shared by the tests of the planning worker (core and node level)."""


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ctrl_c_when(cmd: list[str], ready, env: dict, wait: float, settle: float = 1.0,
                timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``cmd`` in a process group of its own, press Ctrl-C (SIGINT to the group) once
    ``ready()`` is true plus ``settle`` seconds, and return (exit code, stdout, stderr).
    Fails if the process ends or ``wait`` seconds pass before it is ready; the group is
    killed if it does not end within ``timeout`` of the SIGINT."""
    import os
    import signal
    import subprocess
    import time

    # SIGINT as a terminal delivers it: a test run started in the background by a script
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        end = time.monotonic() + wait
        while not ready():
            assert p.poll() is None, f"{cmd[0]} ended early: {p.stderr.read()[-2000:]}"
            assert time.monotonic() < end, f"not ready within {wait:g} s"
            time.sleep(0.2)
        time.sleep(settle)
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, stdout, stderr
