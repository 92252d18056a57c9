"""Test-wide set-up: single-threaded BLAS, as the nodes and the CLI run (see
mbrl_ros.core.threads): small-matrix numerics are faster and timing is more repeatable."""
from mbrl_ros.core.threads import limit_threads

limit_threads()
