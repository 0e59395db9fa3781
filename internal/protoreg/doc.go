// Package protoreg knows the protobuf APIs whose calls containerdsnoop can
// decode, whichever protocol carries them: the method registry (read from
// the registered descriptors, never typed by hand), decoding a message with
// its method's types (through a cache of decoded messages), decoding
// without a schema for display by field number, and which methods a
// payload fits strictly (FitMethods: the labelled guess of a method from
// its request's bytes, and grpcdecode's inference, share it).
//
// Schema-less decoding is written out with protowire rather than through
// protoreflect's dynamic messages, which need a descriptor to decode
// against; its cases look alike because each wire type is consumed by its
// own protowire function.
package protoreg
