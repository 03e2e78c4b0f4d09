//! Integration tests: the real server on port 0 against the real RabbitMQ and Postgres.
//! One test binary (faster to build and link); each module is one area.

mod common;
mod gateway;
