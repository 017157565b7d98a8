#!/bin/bash
# cap.sh PORT URL OUT [extra chromium args]: one Chromium visit, records both ways.
port=$1; url=$2; out=$3; shift 3
tshark -i lo -f "tcp port $port" -w $out.pcap -q 2>/dev/null &
tp=$!
sleep 1.5
timeout 20 chromium --headless=new --no-sandbox --disable-gpu --ignore-certificate-errors --user-data-dir=$(mktemp -d) \
  --no-first-run --disable-background-networking --disable-component-update --disable-sync \
  "$@" --dump-dom "$url" >/dev/null 2>&1
sleep 1
kill $tp; wait $tp 2>/dev/null
tshark -r $out.pcap -Y 'tls.record' -T fields -e frame.time_relative -e tcp.srcport -e tcp.stream -e tls.record.content_type -e tls.record.length -E occurrence=a 2>/dev/null > $out.txt
tshark -r $out.pcap -Y 'tcp.flags.fin==1 || tcp.flags.reset==1' -T fields -e frame.time_relative -e tcp.srcport -e tcp.stream -e tcp.flags.str 2>/dev/null > $out.close.txt
