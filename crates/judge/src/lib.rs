//! guard's judge: pure decisions from counts. No clock, no I/O.
