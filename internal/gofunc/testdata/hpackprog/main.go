// hpackprog links golang.org/x/net/http2/hpack and encodes one field, so
// that the function table of its (stripped) build holds the encoder.
package main

import (
	"bytes"
	"fmt"

	"golang.org/x/net/http2/hpack"
)

func main() {
	var b bytes.Buffer
	e := hpack.NewEncoder(&b)
	_ = e.WriteField(hpack.HeaderField{Name: ":path", Value: "/x"})
	fmt.Println(b.Len())
}
