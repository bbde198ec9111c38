//! End-to-end tests: Herald against a real broker and other-language clients.

mod python_producer;
