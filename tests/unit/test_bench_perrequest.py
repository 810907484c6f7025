"""`python -m bench.perrequest`: reading `strace -c` output."""

from __future__ import annotations

from bench.perrequest import parse_strace_c

STRACE_C = """\
strace: Process 4242 attached with 3 threads
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 41.20    0.101000           5     20104      1003 read
 35.00    0.085800           4     20040           write
 20.10    0.049275          12      4012           epoll_wait
  0.02    0.000049          49         1           futex
------ ----------- ----------- --------- --------- ----------------
100.00    0.245124           5     44157      1003 total
"""


def test_calls_by_name_errors_included_total_left_out() -> None:
    assert parse_strace_c(STRACE_C) == {"read": 20104, "write": 20040, "epoll_wait": 4012,
                                        "futex": 1}


def test_nothing_traced_is_nothing() -> None:
    assert parse_strace_c("strace: Process 1 attached\n") == {}
