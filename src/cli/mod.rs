//! Parts of the `twinlun` command line that are not `serve` or a plain `ctl` request:
//! each in its own file, so `main.rs` only names them.
//!
//! - `config`: `ctl config export`.
//! - `docs`: `completions` (bash, zsh, fish) and `man`, both generated from the clap
//!   definition in `main.rs`, so they list exactly the commands and flags that exist.

pub mod config;
pub mod docs;
