package transport

// tcpNotsentLowat is TCP_NOTSENT_LOWAT (macOS, iOS).
const tcpNotsentLowat = 0x201
