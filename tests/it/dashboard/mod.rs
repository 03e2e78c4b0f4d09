//! The dashboard on the admin listener: the web console's page and files, its JSON endpoints,
//! their auth. The browser tests of the same pages are in tests/js/dashboard.test.mjs.

mod console;
mod grafana;
mod system;
mod web;
