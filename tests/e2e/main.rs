//! vakt's integration tests in one test binary (one link of the crate instead of one per file).
//! Each module is one area; `tests/README.md` lists them and how to run one. The tests share
//! this process, so none may change process-wide state (environment, current directory, a
//! global allocator or recorder of its own), and assertions on vakt's process-wide metrics
//! compare a labelled series before and after, never an absolute count.

mod common;

mod alerts;
mod audit;
mod capture;
mod cli;
mod code_layout;
mod crash;
mod dpop;
mod faults;
mod federation;
mod handshake;
mod header_corpus;
mod helm;
mod host_corpus;
mod idp_proxy;
mod lifecycle;
mod limits;
mod mesh;
mod oidc;
mod policy;
mod redaction;
mod supply_chain;
