package bpf

import "testing"

// One object serves kernels with and without bpf_loop: each exit program
// has a bounded twin, and exactly one of each pair is loaded, under the
// plain name.
func TestUseBoundedPrograms(t *testing.T) {
	for _, loop := range []bool{true, false} {
		spec, err := loadSnoop()
		if err != nil {
			t.Fatal(err)
		}
		twins := 0
		for name := range spec.Programs {
			if _, ok := spec.Programs[name+boundedSuffix]; ok {
				twins++
			}
		}
		if twins != 8 {
			t.Fatalf("%d programs have a bounded twin, want 8 (4 tracepoint exits, fexit and its spare, kretprobe, the peer probe)", twins)
		}
		want := spec.Programs["tp_exit_write"]
		if !loop {
			want = spec.Programs["tp_exit_write"+boundedSuffix]
		}
		useBoundedPrograms(spec, loop)
		for name := range spec.Programs {
			if len(name) > len(boundedSuffix) && name[len(name)-len(boundedSuffix):] == boundedSuffix {
				t.Errorf("loop=%v: %s still in the spec", loop, name)
			}
		}
		if spec.Programs["tp_exit_write"] != want {
			t.Errorf("loop=%v: tp_exit_write is %s", loop, spec.Programs["tp_exit_write"].Name)
		}
	}
}
