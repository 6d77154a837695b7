"""The int8 dot-product instructions a target has, as TVM tensor intrinsics.

An int8 convolution or matrix product is tensorized with one instruction per ``lanes`` output
channels x 4 reduction elements (:func:`dot_product`):

- x86 AVX512-VNNI ``vpdpbusd``: 16 int32 sums of unsigned 8-bit activations x signed 8-bit
  weights (``edgecc_dot_16x4_vnni``);
- ARMv8.2 dot product ``sdot``: 4 int32 sums of signed x signed bytes (``edgecc_dot_4x4_sdot``;
  Cortex-A76/A78: the rpi5 and jetson-orin-cpu targets, ``+dotprod``).

They are registered here, not taken from TVM: TVM 0.27's ``dot_16x4_vnni`` passes ``<16 x i32>``
operands, which the LLVM it is built with rejects (``vpdpbusd.512`` takes ``<64 x i8>``: "Call
parameter type does not match function signature"), and importing its ``tensor_intrin``
package, which holds them, takes ~20 s (it builds every GPU intrinsic too).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class DotProduct:
    name: str  # the TVM tensor intrinsic
    lanes: int  # output channels (int32 sums) per instruction
    reduction: int  # input elements summed into each
    activations: str  # the activations' dtype it multiplies: "uint8" (VNNI) or "int8"
    llvm: str  # the LLVM intrinsic as the scheduled kernel names it
    call: str  # ... and its full (overloaded) name, which the kernel calls
    mnemonic: str  # the instruction (appears in the disassembly)
    registers: int = 32  # vector registers a register tile may use (AVX-512: zmm0-31; NEON)


VNNI = DotProduct("edgecc_dot_16x4_vnni", 16, 4, "uint8", "llvm.x86.avx512.vpdpbusd.512",
                  "llvm.x86.avx512.vpdpbusd.512", "vpdpbusd")
SDOT = DotProduct("edgecc_dot_4x4_sdot", 4, 4, "int8", "llvm.aarch64.neon.sdot",
                  "llvm.aarch64.neon.sdot.v4i32.v16i8", "sdot")

# CPUs (LLVM names) with AVX512-VNNI, for targets that name a CPU rather than list features
_VNNI_CPUS = ("cascadelake", "cooperlake", "icelake-server", "icelake-client", "tigerlake",
              "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5",
              "rocketlake")


def dot_product(target) -> DotProduct | None:
    """The int8 dot product of ``target`` (a ``tvm.target.Target``), registered with TVM, or
    None when it has none (AVX2, AVX-512 without VNNI, ARMv8.0 such as the Pi 4's A72)."""
    attrs = dict(target.attrs.items())
    triple, cpu = str(attrs.get("mtriple", "")), str(attrs.get("mcpu", ""))
    mattr = [str(a) for a in attrs.get("mattr", [])]
    found = None
    if triple.startswith("x86_64") and (cpu in _VNNI_CPUS or "+avx512vnni" in mattr):
        found = VNNI
    elif triple.startswith("aarch64") and "+dotprod" in mattr:
        found = SDOT
    if found is not None:
        _register(found)
    return found


@cache
def _register(dot: DotProduct) -> None:
    from tvm.s_tir import TensorIntrin  # noqa: PLC0415

    TensorIntrin.register(dot.name, *_intrinsic(dot), override=True)


def _intrinsic(dot: DotProduct):
    """(what the instruction computes, how): ``c[i] += sum_k a[k] * b[i, k]`` for ``lanes``
    int32 sums ``c`` of 4 activations ``a`` broadcast to every lane and ``lanes`` x 4 weights
    ``b``, one LLVM intrinsic call on ``(c, broadcast a, b)`` as byte vectors."""
    from tvm.script import tirx as T  # noqa: PLC0415

    lanes, act, llvm = dot.lanes, dot.activations, dot.call
    act_x4, bytes_x, sums_x = f"{act}x4", f"int8x{4 * lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), act, offset_factor=1),
             b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), act, offset_factor=1),
             b: T.Buffer((lanes, 4), "int8", offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            a_i32 = T.reinterpret(a.vload([0], act_x4), dtype="int32")
            c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm), c.vload([0], dtype=sums_x),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=bytes_x),
                b.vload([0, 0], dtype=bytes_x), dtype=sums_x)

    return desc, impl

