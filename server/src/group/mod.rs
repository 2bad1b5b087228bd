//! Consumer groups (issue #4, in progress): so far the partition assignors. The sans-IO
//! coordinator, membership endpoints and offset commits build on them.

pub mod assignor;
