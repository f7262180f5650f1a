//! Ferrum: an Electrum protocol server.
