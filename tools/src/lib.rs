//! Shared code for Ferrum's test and benchmark tools.
