"""cuda_library: .cu files compiled by nvcc (sm_90 machine code plus compute_90 PTX) as a cc_library.

Each .cu becomes one genrule (nvcc -c) whose object feeds a cc_library. The genrules are tagged
manual and the objects are selected on //:cuda, so a build without --config=cuda never runs nvcc and
gets a library with the headers only. The sandbox sees only declared inputs, so the genrule gets
the library's own headers and every header of its deps (collected from their CcInfo).
"""

load("@local_cuda//:defs.bzl", "NVCC")

_NVCC_FLAGS = [
    "-c",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
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

def cuda_library(name, srcs, hdrs = [], deps = [], copts = [], **kwargs):
    """A cc_library over nvcc-compiled srcs (.cu); hdrs and deps as for cc_library.

    copts go to nvcc (e.g. "-lineinfo"). Under --config=cuda the library links cudart, cuBLAS and
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
            cmd = "%s %s %s -o $@ $(location %s)" % (
                NVCC,
                " ".join(_NVCC_FLAGS),
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
