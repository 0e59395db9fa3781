// Package wirerec records and replays the raw bytes written on stream
// connections, for testing decoders that see only what a process writes on a
// socket (HTTP/2 frames carrying gRPC calls).
//
// # File format
//
// A .wire file is the 8-byte header "WIREREC1" followed by records, one per
// Write call made on a connection, in the order the writes happened across
// all connections of the recording:
//
//	record := conn uint32 (big-endian; connection number within the file, from 1)
//	          | dir uint8 (0 = client→server, 1 = server→client)
//	          | len uint32 (big-endian)
//	          | bytes[len]
//
// Each record holds what one side WROTE; what a side reads is never recorded
// (it is the other side's writes). Concatenating, in file order, the Data of
// all records with a given (Conn, FromServer) gives that direction's byte
// stream; for client→server it starts with the HTTP/2 client preface.
package wirerec

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// Magic is the 8-byte header at the start of every .wire file.
const Magic = "WIREREC1"

// recordHeaderLen is the size of conn + dir + len.
const recordHeaderLen = 4 + 1 + 4

// MaxRecordLen bounds a single record's payload when reading, so that a
// corrupt length cannot make Read allocate gigabytes.
const MaxRecordLen = 64 << 20

// Direction bytes as stored in the file.
const (
	DirClientToServer uint8 = 0
	DirServerToClient uint8 = 1
)

// Record is one Write call on one side of a connection.
type Record struct {
	// Conn is the connection number within the recording, from 1.
	Conn uint32
	// FromServer is true for bytes the server wrote (server→client), false
	// for bytes the client wrote (client→server).
	FromServer bool
	// Data is exactly what was passed to (and accepted by) Write.
	Data []byte
}

// Dir returns the record's direction byte as stored in the file.
func (r Record) Dir() uint8 {
	if r.FromServer {
		return DirServerToClient
	}
	return DirClientToServer
}

// Write writes the file header followed by recs to w.
func Write(w io.Writer, recs []Record) error {
	bw := bufio.NewWriter(w)
	if _, err := bw.WriteString(Magic); err != nil {
		return err
	}
	var hdr [recordHeaderLen]byte
	for i, r := range recs {
		if r.Conn == 0 {
			return fmt.Errorf("wirerec: record %d has connection number 0 (numbers start at 1)", i)
		}
		if uint64(len(r.Data)) > 0xffffffff {
			return fmt.Errorf("wirerec: record %d too large (%d bytes)", i, len(r.Data))
		}
		binary.BigEndian.PutUint32(hdr[0:4], r.Conn)
		hdr[4] = r.Dir()
		binary.BigEndian.PutUint32(hdr[5:9], uint32(len(r.Data)))
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := bw.Write(r.Data); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Read reads a whole .wire stream: the header, then records up to EOF.
// A record cut short (in its header or its data) is reported as
// "truncated record at offset N", N being the offset of the record's first
// byte from the start of the stream.
func Read(r io.Reader) ([]Record, error) {
	br := bufio.NewReader(r)
	var magic [len(Magic)]byte
	n, err := io.ReadFull(br, magic[:])
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("wirerec: truncated header: %d of %d bytes", n, len(Magic))
		}
		return nil, fmt.Errorf("wirerec: reading header: %w", err)
	}
	if string(magic[:]) != Magic {
		return nil, fmt.Errorf("wirerec: bad header %q, want %q", magic[:], Magic)
	}
	off := int64(len(Magic))
	var recs []Record
	var hdr [recordHeaderLen]byte
	for {
		n, err := io.ReadFull(br, hdr[:])
		if err == io.EOF && n == 0 {
			return recs, nil
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return recs, fmt.Errorf("wirerec: truncated record at offset %d", off)
			}
			return recs, fmt.Errorf("wirerec: reading record at offset %d: %w", off, err)
		}
		conn := binary.BigEndian.Uint32(hdr[0:4])
		dir := hdr[4]
		size := binary.BigEndian.Uint32(hdr[5:9])
		if conn == 0 {
			return recs, fmt.Errorf("wirerec: record at offset %d has connection number 0", off)
		}
		if dir > DirServerToClient {
			return recs, fmt.Errorf("wirerec: record at offset %d has bad direction %d", off, dir)
		}
		if size > MaxRecordLen {
			return recs, fmt.Errorf("wirerec: record at offset %d too large (%d bytes)", off, size)
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(br, data); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return recs, fmt.Errorf("wirerec: truncated record at offset %d", off)
			}
			return recs, fmt.Errorf("wirerec: reading record at offset %d: %w", off, err)
		}
		recs = append(recs, Record{Conn: conn, FromServer: dir == DirServerToClient, Data: data})
		off += recordHeaderLen + int64(size)
	}
}

// Load reads the .wire file at path.
func Load(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// Save writes recs to the file at path (created or truncated).
func Save(path string, recs []Record) error {
	var buf bytes.Buffer
	if err := Write(&buf, recs); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// Conns returns the connection numbers present in recs, ascending.
func Conns(recs []Record) []uint32 {
	seen := map[uint32]bool{}
	var out []uint32
	for _, r := range recs {
		if !seen[r.Conn] {
			seen[r.Conn] = true
			out = append(out, r.Conn)
		}
	}
	slices.Sort(out)
	return out
}

// Stream concatenates, in record order, the bytes written on connection conn
// in one direction.
func Stream(recs []Record, conn uint32, fromServer bool) []byte {
	var out []byte
	for _, r := range recs {
		if r.Conn == conn && r.FromServer == fromServer {
			out = append(out, r.Data...)
		}
	}
	return out
}
