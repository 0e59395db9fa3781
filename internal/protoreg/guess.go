package protoreg

import (
	"math/bits"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// GuessGRPCMethod names the registered gRPC method whose request type the
// payload fits, when exactly one does. Fitting is strict: the bytes parse,
// no field lands in unknown fields at any depth (a field number or wire
// type the type does not declare), and every string is text without
// control characters (a nested message would otherwise pass for a string).
// It is shown labelled as a guess, never as the method.
func GuessGRPCMethod(payload []byte) string {
	if len(payload) == 0 {
		return "" // an empty message fits every type
	}
	if m, ok := FitMethods(payload, false).Only(); ok {
		return m.Path
	}
	return ""
}

// MethodSet is a set of Candidates, bit i for Candidates()[i]; nil and
// all-zero are empty.
type MethodSet []uint64

// AllMethods is the set of every candidate.
func AllMethods() MethodSet {
	c := Candidates()
	s := make(MethodSet, (len(c)+63)/64)
	for i := range c {
		s[i/64] |= 1 << (i % 64)
	}
	return s
}

// MethodSetOf is the set holding the candidate with this path, empty when
// no candidate has it (not registered, ttrpc-only, or a v1alpha2 twin).
func MethodSetOf(path string) MethodSet {
	c := Candidates()
	s := make(MethodSet, (len(c)+63)/64)
	if i, ok := slices.BinarySearchFunc(c, path, func(m *Method, p string) int { return strings.Compare(m.Path, p) }); ok {
		s[i/64] |= 1 << (i % 64)
	}
	return s
}

// And is the intersection, in a new set.
func (s MethodSet) And(o MethodSet) MethodSet {
	out := make(MethodSet, min(len(s), len(o)))
	for i := range out {
		out[i] = s[i] & o[i]
	}
	return out
}

// Or is the union, in a new set.
func (s MethodSet) Or(o MethodSet) MethodSet {
	out := make(MethodSet, max(len(s), len(o)))
	for i := range out {
		if i < len(s) {
			out[i] |= s[i]
		}
		if i < len(o) {
			out[i] |= o[i]
		}
	}
	return out
}

// Empty reports whether no candidate is in s.
func (s MethodSet) Empty() bool {
	for _, w := range s {
		if w != 0 {
			return false
		}
	}
	return true
}

// Only returns the one candidate in s, when there is exactly one.
func (s MethodSet) Only() (*Method, bool) {
	found := -1
	for i, w := range s {
		if w == 0 {
			continue
		}
		if found >= 0 || w&(w-1) != 0 {
			return nil, false
		}
		found = i*64 + bits.TrailingZeros64(w)
	}
	if found < 0 {
		return nil, false
	}
	return Candidates()[found], true
}

// FitMethods returns the candidates whose request type (response false)
// or response type (response true) the payload fits strictly (see
// GuessGRPCMethod). An empty payload fits every type; one over
// fitMaxMessage (64 KiB) is not tried and fits none.
func FitMethods(payload []byte, response bool) MethodSet {
	candOnce.Do(buildCandidates)
	if len(payload) > fitMaxMessage {
		// Fitting parses the payload once per candidate type: hundreds
		// of parses of a 1 MiB message took seconds each, and kept a
		// tracer from stopping (it still had such messages to decode
		// when interrupted). A large message fits nothing proved: no
		// guess, and no inference from its call.
		return nil
	}
	side := 0
	if response {
		side = 1
	}
	small := len(payload) <= fitCacheMessage
	if small {
		fitCache.Lock()
		s, ok := fitCache.m[side][string(payload)]
		fitCache.Unlock()
		if ok {
			return s
		}
	}
	s := fitMethods(payload, response)
	if small {
		fitCache.Lock()
		if len(fitCache.m[side]) >= fitCacheEntries {
			clear(fitCache.m[side])
		}
		fitCache.m[side][string(payload)] = s
		fitCache.Unlock()
	}
	return s
}

// fitCache keeps FitMethods' answers for small payloads, which a polling
// client repeats (each answer costs a parse per candidate type). Sets are
// never changed once made, so they are shared.
var fitCache = struct {
	sync.Mutex
	m [2]map[string]MethodSet
}{m: [2]map[string]MethodSet{{}, {}}}

const (
	fitCacheEntries = 256
	fitCacheMessage = 1 << 10
	// fitMaxMessage is the largest payload fitted against the candidates
	// (CRI and containerd requests are far smaller; large List answers
	// are not fitted).
	fitMaxMessage = 64 << 10
)

func fitMethods(payload []byte, response bool) MethodSet {
	side := candIn
	if response {
		side = candOut
	}
	fit := make([]bool, len(candTypes))
	for i, t := range candTypes {
		_, fit[i] = Fit(payload, t)
	}
	s := make(MethodSet, (len(cands)+63)/64)
	for i := range cands {
		if fit[side[i]] {
			s[i/64] |= 1 << (i % 64)
		}
	}
	return s
}

// Candidates are the methods a gRPC call may be guessed or inferred to be,
// sorted by path: every registered method but those served only over ttrpc
// and the CRI v1alpha2 twins of v1 (v1alpha2.go): every payload fitting
// one fits its twin, so only v1 is a candidate. A guess of runtime.v1.X on
// an older client may be runtime.v1alpha2.X; inference (internal/grpcdecode)
// takes the twin on a connection that showed a v1alpha2 path.
func Candidates() []*Method {
	candOnce.Do(buildCandidates)
	return cands
}

var (
	candOnce sync.Once
	cands    []*Method
	// candTypes are the distinct message types of the candidates (each
	// parsed once per payload); candIn and candOut index them.
	candTypes       []protoreflect.MessageType
	candIn, candOut []int
)

// ttrpcOnly are APIs served over ttrpc, never over gRPC's HTTP/2.
var ttrpcOnly = []string{"/containerd.task.", "/containerd.runtime.", "/containerd.services.events.ttrpc."}

func buildCandidates() {
	for _, m := range Methods() {
		if slices.ContainsFunc(ttrpcOnly, func(p string) bool { return strings.HasPrefix(m.Path, p) }) {
			continue
		}
		if strings.HasPrefix(m.Path, "/"+v1alpha2Package+".") {
			continue
		}
		cands = append(cands, m)
	}
	slices.SortFunc(cands, func(a, b *Method) int { return strings.Compare(a.Path, b.Path) })
	idx := map[protoreflect.FullName]int{}
	typeIndex := func(t protoreflect.MessageType) int {
		n := t.Descriptor().FullName()
		if i, ok := idx[n]; ok {
			return i
		}
		idx[n] = len(candTypes)
		candTypes = append(candTypes, t)
		return idx[n]
	}
	for _, m := range cands {
		candIn = append(candIn, typeIndex(m.Input))
		candOut = append(candOut, typeIndex(m.Output))
	}
}

func fits(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return false
	}
	ok := true
	value := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Message() != nil:
			return fits(v.Message())
		case fd.Kind() == protoreflect.StringKind:
			return isText(v.String())
		}
		return true
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				ok = value(fd.MapKey(), k.Value()) && value(fd.MapValue(), mv)
				return ok
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = value(fd, l.Get(i))
			}
		default:
			ok = value(fd, v)
		}
		return ok
	})
	return ok
}

func isText(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}
