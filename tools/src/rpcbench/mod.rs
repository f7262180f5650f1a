//! An Electrum query load generator: picks scripts of chosen history sizes from a chain file
//! ([`scripts`]) and drives a server's TCP port with closed-loop request streams on several
//! connections, timing each request to the last byte of its reply ([`load`]).

pub mod load;
pub mod scripts;
