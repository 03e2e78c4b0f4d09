//! Integration tests: the real server on port 0 (or the real binary) against the real RabbitMQ
//! and Postgres. One test binary (faster to build and link); each module is one area.

mod api;
mod channels;
mod cluster;
mod cluster_webhooks;
mod common;
mod conformance;
mod dashboard;
mod durable;
mod edge;
mod faults;
mod fuzz_findings;
mod gateway;
mod live_link;
mod processes;
mod segment;
mod startup;
mod tls;
mod web_client;
mod webhooks;
