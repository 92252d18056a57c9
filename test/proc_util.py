"""Process helpers shared by the tests of the planning worker (core and node level)."""


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
