//! Black-box tests for Strata. The binaries in `src/bin` are the processes the tests start and
//! kill; the tests themselves live in `tests/`.
