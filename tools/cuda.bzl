"""cuda_library: .cu files compiled by nvcc (by default sm_90 machine code plus compute_90 PTX) as a cc_library.

Each .cu becomes one genrule (nvcc -c) whose object feeds a cc_library. The genrules are tagged
manual and the objects are selected on //:cuda, so a build without --config=cuda never runs nvcc and
gets a library with the headers only. The sandbox sees only declared inputs, so the genrule gets
the library's own headers and every header of its deps (collected from their CcInfo).
"""

load("@local_cuda//:defs.bzl", "NVCC")

# Code for every Hopper-class and later GPU: sm_90 machine code, and compute_90 PTX the driver can
# compile for newer chips. A library of Hopper-only kernels (wgmma, setmaxnreg) passes
# gencode = SM90A instead: that code runs on compute capability 9.0 only.
DEFAULT_GENCODE = [
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
SM90A = ["-gencode=arch=compute_90a,code=sm_90a"]

_NVCC_FLAGS = [
    "-c",
    "-O3",
    "--std=c++17",
    "-Xcompiler=-fPIC,-Wall",
    "-DMOELAB_CUDA=1",
    "-I.",
]

def _cc_headers_impl(ctx):
    return [DefaultInfo(files = depset(transitive = [
        dep[CcInfo].compilation_context.headers
        for dep in ctx.attr.deps
    ]))]

# Every header (transitively) of a list of cc_library targets, as files a genrule can take.
_cc_headers = rule(
    implementation = _cc_headers_impl,
    attrs = {"deps": attr.label_list(providers = [CcInfo])},
)

def cuda_library(name, srcs, hdrs = [], deps = [], copts = [], gencode = DEFAULT_GENCODE, **kwargs):
    """A cc_library over nvcc-compiled srcs (.cu); hdrs and deps as for cc_library.

    copts go to nvcc (e.g. "-lineinfo"); gencode chooses the GPU code (DEFAULT_GENCODE or SM90A). Under --config=cuda the library links cudart, cuBLAS and
    cuBLASLt from @local_cuda; without it the library holds hdrs only.
    """
    dep_hdrs = name + "_dep_hdrs"
    _cc_headers(name = dep_hdrs, deps = deps, tags = ["manual"])
    objs = []
    for src in srcs:
        if not src.endswith(".cu"):
            fail("cuda_library %s: %s is not a .cu file" % (name, src))
        obj = "_cuda_objs/%s/%s.o" % (name, src[:-len(".cu")])
        native.genrule(
            name = "%s_%s_nvcc" % (name, src[:-len(".cu")].replace("/", "_")),
            srcs = [src, ":" + dep_hdrs] + hdrs,
            outs = [obj],
            tools = ["@local_cuda//:nvcc"],
            cmd = "%s %s %s %s -o $@ $(location %s)" % (
                NVCC,
                " ".join(_NVCC_FLAGS),
                " ".join(gencode),
                " ".join(copts),
                src,
            ),
            message = "nvcc %s" % src,
            tags = ["manual"],
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = select({"//:cuda": objs, "//conditions:default": []}),
        hdrs = hdrs,
        deps = deps + select({
            "//:cuda": [
                "@local_cuda//:cudart",
                "@local_cuda//:cublas",
                "@local_cuda//:cublasLt",
            ],
            "//conditions:default": [],
        }),
        **kwargs
    )
