package transport

// tcpNotsentLowat is TCP_NOTSENT_LOWAT (Linux, Android).
const tcpNotsentLowat = 25
