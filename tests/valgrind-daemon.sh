#!/bin/sh
# streambusd under valgrind memcheck, for `make check-valgrind` (the
# integration suite runs it in place of the daemon through SB_DAEMON).
# Any error, or a definite leak at exit, makes the daemon exit 99, which the
# tests see (a stop that is not exit 0, or a daemon that died).
here=$(cd "$(dirname "$0")" && pwd)
exec valgrind --quiet --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    --log-file="${SB_VALGRIND_LOG:-/tmp/streambusd-valgrind.%p.log}" \
    "$here/../src/streambusd" "$@"
