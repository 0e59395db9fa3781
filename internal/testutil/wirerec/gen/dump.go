package main

import (
	"fmt"
	"io"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/containerdsnoop/containerdsnoop/internal/testutil/wirerec"
)

// dump prints a .wire file: one line per record (write), and under it the
// HTTP/2 frames that start in that write.
func dump(w io.Writer, path string) error {
	recs, err := wirerec.Load(path)
	if err != nil {
		return err
	}
	type dirKey struct {
		conn       uint32
		fromServer bool
	}
	type dirState struct {
		buf []byte // bytes not yet parsed into frames
		dec *hpack.Decoder
		pre bool // preface skipped
	}
	states := map[dirKey]*dirState{}
	for i, r := range recs {
		k := dirKey{r.Conn, r.FromServer}
		st := states[k]
		if st == nil {
			st = &dirState{dec: hpack.NewDecoder(4096, nil), pre: r.FromServer}
			states[k] = st
		}
		dir := "C->S"
		if r.FromServer {
			dir = "S->C"
		}
		fmt.Fprintf(w, "#%d conn %d %s write of %d bytes\n", i, r.Conn, dir, len(r.Data))
		st.buf = append(st.buf, r.Data...)
		if !st.pre {
			if len(st.buf) < len(wirerec.ClientPreface) {
				continue
			}
			fmt.Fprintf(w, "    preface\n")
			st.buf = st.buf[len(wirerec.ClientPreface):]
			st.pre = true
		}
		for len(st.buf) >= 9 {
			n := int(st.buf[0])<<16 | int(st.buf[1])<<8 | int(st.buf[2])
			if len(st.buf) < 9+n {
				fmt.Fprintf(w, "    (frame continues in a later write: %d of %d bytes here)\n", len(st.buf), 9+n)
				break
			}
			fh := http2.FrameHeader{Type: http2.FrameType(st.buf[3]), Flags: http2.Flags(st.buf[4]),
				StreamID: (uint32(st.buf[5])<<24 | uint32(st.buf[6])<<16 | uint32(st.buf[7])<<8 | uint32(st.buf[8])) & 0x7fffffff,
				Length:   uint32(n)}
			payload := st.buf[9 : 9+n]
			fmt.Fprintf(w, "    %s\n", fh)
			if fh.Type == http2.FrameHeaders || fh.Type == http2.FrameContinuation {
				p := payload
				if fh.Type == http2.FrameHeaders {
					if fh.Flags.Has(http2.FlagHeadersPadded) && len(p) > 0 {
						pad := int(p[0])
						p = p[1 : len(p)-pad]
					}
					if fh.Flags.Has(http2.FlagHeadersPriority) {
						p = p[5:]
					}
				}
				fields, err := st.dec.DecodeFull(p)
				if err != nil {
					fmt.Fprintf(w, "      hpack: %v\n", err)
				}
				for _, f := range fields {
					fmt.Fprintf(w, "      %s: %q\n", f.Name, f.Value)
				}
			}
			st.buf = st.buf[9+n:]
		}
	}
	return nil
}
