package main

// msgSize is the request and the answer of pingpong and connrate: 1 KB, as the
// benchmark's latency and connection-rate targets are stated for it.
const msgSize = 1024
