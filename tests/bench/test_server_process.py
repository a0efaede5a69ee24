"""wait_healthy: a server that exits before it is healthy is an error with what it said; none at all times out."""

import subprocess
import sys

import pytest

from polyhead.bench.server_process import free_port, wait_healthy


def test_a_server_that_exits_first_is_an_error_with_its_stderr():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stderr.write('no model'); sys.exit(3)"],
                               stderr=subprocess.PIPE, text=True)
    with pytest.raises(ValueError, match="code 3 before it was healthy. no model"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", 30, process)


def test_no_server_times_out():
    with pytest.raises(ValueError, match="not healthy after 0.5 s"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", 0.5)
