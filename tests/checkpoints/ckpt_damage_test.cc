// Every user-reachable error message of the checkpoint reader (checkpoints/format.c, h5.c, ckpt.c,
// inspect.c) that the older tests reached only through the fuzzers (by exit code) or not at all,
// produced by one structural damage each and checked by its text: a table of (damage, the file the
// message names, the message). Each case copies a sound checkpoint made once for the suite (a single
// file, an index of two EP parts, a single file with an /eplb group), damages the copy with the
// HDF5 C API (a foreign or wrongly typed attribute, a dataset of another rank, shape, type, layout,
// filter or chunk shape, a virtual mapping of the index that names another file or dataset, selects
// other rows, overlaps or leaves a gap, a part file of another checkpoint...), and then runs the
// readers the message is for: `moelab ckpt verify` (ckpt_test::verify, what tools/cmd_ckpt.c runs),
// the loader of `train --resume` (ckpt_load, one process) and `moelab ckpt inspect`. Each must end
// with exit 2 and "checkpoint <dir>/<file>: <message>".
//
// Messages that this table does not reach, and why, are listed in tests/README.md ("Error messages
// of the checkpoint reader"); the messages tested elsewhere are in ckpt_errors_test.cc and
// ckpt_cli_test.sh.
#include <hdf5.h>
#include <sys/stat.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tests/checkpoints/ckpt_test_util.h"

using namespace ckpt_test;
using ::testing::ExitedWithCode;

namespace {

// The files of the three sound checkpoints every case starts from.
const char *const kSingle = "single.h5";
const char *const kIndex = "index.h5";
const char *const kPart0 = "index.h5.part-0-of-2";
const char *const kPart1 = "index.h5.part-1-of-2";
const char *const kEplb = "eplb.h5";

// An expert tensor of the index, shape (E = 4, D = 16, Fe = 8): mapping 0 takes rows 0..1 from part
// 0, mapping 1 rows 2..3 from part 1 (rows 0..1 there). Opened after tensors that map to both parts.
const char *const kExpert = "/optim/v/layers.2.experts.w2";
const hsize_t kExpertDims[3] = {4, 16, 8};

// ---------------------------------------------------------------------------------------------
// Damage: small edits of a copy through the HDF5 C API. Each opens the file, edits, closes.

hid_t open_rw(const std::string &path) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) ADD_FAILURE() << "cannot open " << path;
    return f;
}

void check(herr_t r, const char *what) {
    if (r < 0) ADD_FAILURE() << "damage step failed: " << what;
}

// Attribute `name` of object `obj` replaced by one of type `type` holding `n` values (0: a scalar).
void set_attr(const std::string &path, const char *obj, const char *name, hid_t type, int n, const void *v) {
    hid_t f = open_rw(path), o = H5Oopen(f, obj, H5P_DEFAULT);
    if (H5Aexists(o, name) > 0) check(H5Adelete(o, name), "delete attribute");
    hsize_t d = (hsize_t)n;
    hid_t s = n ? H5Screate_simple(1, &d, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
    check(H5Awrite(a, type, v), "write attribute");
    H5Aclose(a);
    H5Sclose(s);
    H5Oclose(o);
    H5Fclose(f);
}

void set_i64(const std::string &path, const char *obj, const char *name, int64_t v) {
    set_attr(path, obj, name, H5T_STD_I64LE, 0, &v);
}

// A fixed-length string attribute of `size` bytes (NUL-padded), or a variable-length one (size 0):
// what h5py writes for a Python str.
void set_str(const std::string &path, const char *obj, const char *name, const std::string &s, size_t size) {
    hid_t t = H5Tcopy(H5T_C_S1);
    check(H5Tset_size(t, size ? size : H5T_VARIABLE), "string size");
    if (size) {
        std::string buf(s);
        buf.resize(size, '\0');
        set_attr(path, obj, name, t, 0, buf.data());
    } else {
        const char *p = s.c_str();
        set_attr(path, obj, name, t, 0, &p);
    }
    H5Tclose(t);
}

void delete_attr(const std::string &path, const char *obj, const char *name) {
    hid_t f = open_rw(path), o = H5Oopen(f, obj, H5P_DEFAULT);
    check(H5Adelete(o, name), "delete attribute");
    H5Oclose(o);
    H5Fclose(f);
}

void delete_link(const std::string &path, const char *name) {
    hid_t f = open_rw(path);
    check(H5Ldelete(f, name, H5P_DEFAULT), "delete link");
    H5Fclose(f);
}

// The `kind` attribute of a dataset (empty if absent), so a replaced dataset keeps it.
std::string kind_of(hid_t d) {
    if (H5Aexists(d, "kind") <= 0) return "";
    hid_t a = H5Aopen(d, "kind", H5P_DEFAULT), t = H5Aget_type(a);
    std::string s(H5Tget_size(t), '\0');
    H5Aread(a, t, &s[0]);
    H5Tclose(t);
    H5Aclose(a);
    return s.c_str();
}

void write_kind(hid_t d, const std::string &kind) {
    if (kind.empty()) return;
    hid_t t = H5Tcopy(H5T_C_S1), s = H5Screate(H5S_SCALAR);
    H5Tset_size(t, kind.size() + 1);
    hid_t a = H5Acreate2(d, "kind", t, s, H5P_DEFAULT, H5P_DEFAULT);
    check(H5Awrite(a, t, kind.c_str()), "write kind");
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

// A dataset as another writer might store one: type, extent (empty: a scalar), maximum extent (empty:
// the extent), chunk shape (empty: contiguous), filters, and all values `value` unless unwritten.
struct Dataset {
    hid_t type = H5T_IEEE_F32LE;
    std::vector<hsize_t> dims, maxdims, chunk;
    bool fletcher = true, deflate = false, write = true;
    double value = 0;
};

// Replaces dataset `name` of the file by `ds` (with the old one's `kind` attribute).
void replace_dataset(const std::string &path, const char *name, const Dataset &ds) {
    hid_t f = open_rw(path);
    hid_t old = H5Dopen2(f, name, H5P_DEFAULT);
    const std::string kind = kind_of(old);
    H5Dclose(old);
    check(H5Ldelete(f, name, H5P_DEFAULT), "delete dataset");
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (!ds.chunk.empty()) {
        check(H5Pset_chunk(dcpl, (int)ds.chunk.size(), ds.chunk.data()), "chunk");
        if (ds.deflate) check(H5Pset_deflate(dcpl, 6), "deflate");
        if (ds.fletcher) check(H5Pset_fletcher32(dcpl), "fletcher32");
    }
    hid_t s = ds.dims.empty() ? H5Screate(H5S_SCALAR)
                              : H5Screate_simple((int)ds.dims.size(), ds.dims.data(),
                                                 ds.maxdims.empty() ? NULL : ds.maxdims.data());
    hid_t d = H5Dcreate2(f, name, ds.type, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    check(d, "create dataset");
    if (ds.write) {
        size_t n = 1;
        for (hsize_t x : ds.dims) n *= (size_t)x;
        std::vector<double> v(n, ds.value);
        check(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "write dataset");
    }
    write_kind(d, kind);
    H5Dclose(d);
    H5Sclose(s);
    H5Pclose(dcpl);
    H5Fclose(f);
}

// Dataset `name` of the given type, (rows, cols) in one chunk, every value `value`.
void replace_filled(const std::string &path, const char *name, hid_t type, hsize_t rows, hsize_t cols,
                    double value) {
    Dataset ds;
    ds.type = type;
    ds.dims = ds.chunk = {rows, cols};
    ds.value = value;
    replace_dataset(path, name, ds);
}

// Dataset `name` of int32 values (rows, cols) = v (an /eplb/phy2log).
void replace_int32(const std::string &path, const char *name, hsize_t rows, hsize_t cols,
                   const std::vector<int32_t> &v) {
    Dataset ds;
    ds.type = H5T_STD_I32LE;
    ds.dims = ds.chunk = {rows, cols};
    ds.write = false;
    replace_dataset(path, name, ds);
    hid_t f = open_rw(path), d = H5Dopen2(f, name, H5P_DEFAULT);
    check(H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), "write int32");
    H5Dclose(d);
    H5Fclose(f);
}

// The only chunk of a dataset (32, 16) replaced by its raw bytes plus a checksum, stored with the
// given filter mask (bit 0 set: the Fletcher-32 filter was skipped for this chunk).
void write_raw_chunk(const std::string &path, const char *name, uint32_t filter_mask) {
    hid_t f = open_rw(path), d = H5Dopen2(f, name, H5P_DEFAULT);
    std::vector<unsigned char> chunk(32 * 16 * 4 + 4, 0);
    const hsize_t off[2] = {0, 0};
    check(H5Dwrite_chunk(d, H5P_DEFAULT, filter_mask, off, chunk.size(), chunk.data()), "write chunk");
    H5Dclose(d);
    H5Fclose(f);
}

// One mapping of a virtual dataset: its selection of the virtual extent, the source file and
// dataset, and the selection of the source's extent. The spaces are owned (closed by the caller of
// rewrite_virtual once the edit ran).
struct Mapping {
    hid_t vspace, srcspace;
    std::string file, dset;
};

// A dataspace of extent `dims` with rows [r0, r0 + n) (whole rows) selected.
hid_t rows(std::vector<hsize_t> dims, hsize_t r0, hsize_t n) {
    hid_t s = H5Screate_simple((int)dims.size(), dims.data(), NULL);
    std::vector<hsize_t> start(dims.size(), 0), count(dims.size(), 1), block(dims);
    start[0] = r0;
    block[0] = n;
    check(H5Sselect_hyperslab(s, H5S_SELECT_SET, start.data(), NULL, count.data(), block.data()), "rows");
    return s;
}

void add_mapping(hid_t dcpl, const Mapping &m) {
    check(H5Pset_virtual(dcpl, m.vspace, m.file.c_str(), m.dset.c_str(), m.srcspace), "H5Pset_virtual");
}

void add_all(hid_t dcpl, const std::vector<Mapping> &maps) {
    for (const Mapping &m : maps) add_mapping(dcpl, m);
}

void replace_space(hid_t *slot, hid_t s) {
    H5Sclose(*slot);
    *slot = s;
}

// Rebuilds virtual dataset `name` of the index with the mappings `edit` sets in a fresh creation
// list (given the old ones), as type `type`, with the old extent and `kind`.
void rewrite_virtual(const std::string &path, const char *name,
                     const std::function<void(hid_t dcpl, std::vector<Mapping> &maps)> &edit,
                     hid_t type = H5T_IEEE_F32LE) {
    hid_t f = open_rw(path), d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t space = H5Dget_space(d), old = H5Dget_create_plist(d);
    const std::string kind = kind_of(d);
    size_t n = 0;
    check(H5Pget_virtual_count(old, &n), "virtual count");
    std::vector<Mapping> maps(n);
    for (size_t i = 0; i < n; i++) {
        char buf[512];
        maps[i].vspace = H5Pget_virtual_vspace(old, i);
        maps[i].srcspace = H5Pget_virtual_srcspace(old, i);
        H5Pget_virtual_filename(old, i, buf, sizeof buf);
        maps[i].file = buf;
        H5Pget_virtual_dsetname(old, i, buf, sizeof buf);
        maps[i].dset = buf;
    }
    H5Pclose(old);
    H5Dclose(d);
    check(H5Ldelete(f, name, H5P_DEFAULT), "delete virtual dataset");
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    check(H5Pset_layout(dcpl, H5D_VIRTUAL), "virtual layout");
    edit(dcpl, maps);
    d = H5Dcreate2(f, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    check(d, "create virtual dataset");
    write_kind(d, kind);
    H5Dclose(d);
    for (Mapping &m : maps) {
        H5Sclose(m.vspace);
        H5Sclose(m.srcspace);
    }
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Fclose(f);
}

std::string in(const std::string &dir, const char *file) { return dir + "/" + file; }

// ---------------------------------------------------------------------------------------------
// The table.

enum Base { SINGLE, INDEX, EPLB };
enum Reader { VERIFY = 1, LOAD = 2, INSPECT = 4 };

struct Case {
    const char *name;
    Base base;
    void (*damage)(const std::string &dir);
    const char *file;     // the file the message names
    const char *message;  // its text after "checkpoint <dir>/<file>: "; {N} stands for a number
    int readers;          // which readers must refuse the damage with the message
};

const Case kCases[] = {
    // The file's format and its attributes (checkpoints/format.c check_format, ckpt_file_state;
    // checkpoints/h5.c attr_open, h5_attr_read, h5_attr_read_str).
    {"ForeignFormatName", SINGLE,
     [](const std::string &d) { set_str(in(d, kSingle), "/", "format", "netcdf4", 8); },
     kSingle, "format is 'netcdf4', not 'moelab-checkpoint'", VERIFY | LOAD | INSPECT},
    {"FormatAsVariableLengthString", SINGLE,  // what h5py writes for a str
     [](const std::string &d) { set_str(in(d, kSingle), "/", "format", "moelab-checkpoint", 0); },
     kSingle, "file: attribute 'format' should be a fixed-length string", VERIFY | LOAD},
    {"FormatAsInteger", SINGLE, [](const std::string &d) { set_i64(in(d, kSingle), "/", "format", 7); },
     kSingle, "file: attribute 'format' should be a fixed-length string", VERIFY | LOAD},
    {"FormatTooLong", SINGLE,
     [](const std::string &d) { set_str(in(d, kSingle), "/", "format", "moelab-checkpoint", 100); },
     kSingle, "file: attribute 'format' has 100 bytes (at most 64 expected)", VERIFY | LOAD},
    {"FormatVersionAsArray", SINGLE,
     [](const std::string &d) {
         const int64_t v[2] = {2, 2};
         set_attr(in(d, kSingle), "/", "format_version", H5T_STD_I64LE, 2, v);
     },
     kSingle, "file: attribute 'format_version' should be a scalar", VERIFY | LOAD},
    {"ConfigMissing", SINGLE, [](const std::string &d) { delete_attr(in(d, kSingle), "/", "config"); },
     kSingle, "file: attribute 'config' is missing", VERIFY | LOAD | INSPECT},
    {"StateAttributeMissing", SINGLE, [](const std::string &d) { delete_attr(in(d, kSingle), "state", "rng_seed"); },
     kSingle, "/state: attribute 'rng_seed' is missing", VERIFY | LOAD | INSPECT},
    {"TokenizerFingerprintZero", SINGLE,
     [](const std::string &d) {
         const uint32_t zero = 0;
         set_attr(in(d, kSingle), "state", "tokenizer", H5T_STD_U32LE, 0, &zero);
     },
     kSingle, "/state: tokenizer fingerprint 0 (a saved one is never 0)", VERIFY | LOAD | INSPECT},
    {"TrainDataFingerprintZero", SINGLE,
     [](const std::string &d) {
         const uint64_t zero = 0;
         set_attr(in(d, kSingle), "state", "train_data", H5T_STD_U64LE, 0, &zero);
     },
     kSingle, "/state: train_data fingerprint 0 (a saved one is never 0)", VERIFY | LOAD | INSPECT},
    // A run saves no step beyond its --steps: --resume asked for a --steps of at least this one
    // (review, 2026-12-06).
    {"StepBeyondTheStoredSteps", SINGLE, [](const std::string &d) { set_i64(in(d, kSingle), "state", "step", 100000); },
     kSingle, "/state holds step 100000, beyond the stored config's steps = {N}: no run saves that", VERIFY},
    {"GlobalBatchZero", SINGLE,
     [](const std::string &d) {
         const int64_t zero = 0;
         set_attr(in(d, kSingle), "state", "global_batch", H5T_STD_I64LE, 0, &zero);
     },
     kSingle, "/state: global_batch 0 (a saved one is at least 1)", VERIFY | LOAD | INSPECT},
    {"TokenizerOfAnotherType", SINGLE,
     [](const std::string &d) {
         const uint64_t fp = 0x1234;
         set_attr(in(d, kSingle), "state", "tokenizer", H5T_STD_U64LE, 0, &fp);
     },
     kSingle, "/state: attribute 'tokenizer' has the wrong type", VERIFY | LOAD},
    {"LineageAsArray", SINGLE,
     [](const std::string &d) {
         const uint64_t v[2] = {1, 2};
         set_attr(in(d, kSingle), "state", "lineage", H5T_STD_U64LE, 2, v);
     },
     kSingle, "/state: attribute 'lineage' should be a scalar", VERIFY | LOAD},

    // The index and its part files (format.c ckpt_file_open, open_part).
    {"PartIdsOfAnotherType", INDEX,
     [](const std::string &d) {
         const int64_t ids[2] = {1, 2};
         set_attr(in(d, kIndex), "/", "part_ids", H5T_STD_I64LE, 2, ids);
     },
     kIndex, "index: attribute 'part_ids' has the wrong type", VERIFY | LOAD},
    {"SingleCheckpointUnderAPartsName", INDEX,
     [](const std::string &d) {
         std::string cmd = "cp '" + in(d, kSingle) + "' '" + in(d, kPart0) + "'";
         ASSERT_EQ(0, system(cmd.c_str()));
     },
     kPart0, "format is 'moelab-checkpoint', not 'moelab-checkpoint-part'", VERIFY | LOAD},
    {"PartOfACheckpointOfThreeParts", INDEX, [](const std::string &d) { set_i64(in(d, kPart1), "/", "parts", 3); },
     kPart1, "is part 1 of 3, but the index {dir}/index.h5 has 2 parts", VERIFY | LOAD},
    {"PartNumberBeyondTheParts", INDEX, [](const std::string &d) { set_i64(in(d, kPart1), "/", "part", 5); },
     kPart1, "is part 5 of 2, but the index {dir}/index.h5 has 2 parts", VERIFY | LOAD},
    {"PartIdMissing", INDEX, [](const std::string &d) { delete_attr(in(d, kPart0), "/", "part_id"); },
     kPart0, "part: attribute 'part_id' is missing", VERIFY | LOAD},

    // The index's virtual mappings (format.c virtual_map, one_row_block, virtual_count,
    // check_virtual, ckpt_open_tensor).
    {"MappingToAFileTheIndexDoesNotName", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             m[1].file = "stranger.h5";
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 maps to more part files than the 2 the index names", VERIFY | LOAD},
    {"MappingSourceNameTooLong", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             m[1].file = std::string(300, 'p');
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1): source name too long", VERIFY | LOAD},
    {"MappingToAnotherDataset", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             m[1].dset = "/optim/v/layers.1.experts.w2";
             add_all(dcpl, m);
         });
     },
     kIndex,
     "/optim/v/layers.2.experts.w2 (virtual mapping 1) maps to dataset '/optim/v/layers.1.experts.w2' of its part",
     VERIFY | LOAD},
    {"MappedDatasetMissingInItsPart", INDEX, [](const std::string &d) { delete_link(in(d, kPart1), kExpert); },
     kPart1, "dataset /optim/v/layers.2.experts.w2 (mapped by the index) is missing", VERIFY | LOAD},
    {"MappedDatasetOfAnotherRank", INDEX,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {2, 128};
         replace_dataset(in(d, kPart1), kExpert, ds);
     },
     kPart1, "/optim/v/layers.2.experts.w2 has another number of dimensions than the index's", VERIFY | LOAD},
    {"MappedDatasetWithOtherRows", INDEX,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {2, 16, 9};
         replace_dataset(in(d, kPart1), kExpert, ds);
     },
     kPart1, "/optim/v/layers.2.experts.w2's rows differ in shape from the index's", VERIFY | LOAD},
    {"MappedDatasetWithoutChecksums", INDEX,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {2, 16, 8};
         ds.fletcher = false;
         replace_dataset(in(d, kPart1), kExpert, ds);
     },
     kPart1, "/optim/v/layers.2.experts.w2 carries no Fletcher-32 checksum filter", VERIFY | LOAD},
    {"MappingSourceSelectionOfAnotherRank", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             // The same 256 elements, as a block of a (32, 8) extent. (Not an "all" selection: HDF5
             // 1.10 stores one without its extent, and the reader then sees 0 dimensions, whatever
             // the source's rank.)
             const hsize_t flat[2] = {32, 8}, zero[2] = {0, 0}, one[2] = {1, 1};
             hid_t s = H5Screate_simple(2, flat, NULL);
             H5Sselect_hyperslab(s, H5S_SELECT_SET, zero, NULL, one, flat);
             replace_space(&m[1].srcspace, s);
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1) has 2 dimensions, not 3", VERIFY | LOAD},
    {"MappingOfRowsWithAGap", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             // Rows 0 and 2 of a source extent of 3 rows: two blocks.
             const hsize_t ext[3] = {3, 16, 8}, start[3] = {0, 0, 0}, stride[3] = {2, 1, 1},
                           count[3] = {2, 1, 1}, block[3] = {1, 16, 8};
             hid_t s = H5Screate_simple(3, ext, NULL);
             H5Sselect_hyperslab(s, H5S_SELECT_SET, start, stride, count, block);
             replace_space(&m[1].srcspace, s);
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1) is not one block of rows", VERIFY | LOAD},
    {"MappingBeyondTheSourceRows", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             replace_space(&m[1].srcspace, rows({4, 16, 8}, 2, 2));  // part 1 holds 2 rows
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1) selects rows beyond the dataset's 2", VERIFY | LOAD},
    {"MappingOneRowBeyondTheSourceRows", INDEX,  // the last row selected is the first one past the extent
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             replace_space(&m[1].srcspace, rows({4, 16, 8}, 1, 2));  // rows 1..2 of part 1's 2 rows
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1) selects rows beyond the dataset's 2", VERIFY | LOAD},
    {"MappingOfPartRows", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             // Rows 2..3 are mapped in two halves of their second axis.
             for (hsize_t half = 0; half < 2; half++) {
                 const hsize_t vs[3] = {2, 8 * half, 0}, ss[3] = {0, 8 * half, 0}, one[3] = {1, 1, 1},
                               block[3] = {2, 8, 8}, src[3] = {2, 16, 8};
                 hid_t v = H5Screate_simple(3, kExpertDims, NULL), s = H5Screate_simple(3, src, NULL);
                 H5Sselect_hyperslab(v, H5S_SELECT_SET, vs, NULL, one, block);
                 H5Sselect_hyperslab(s, H5S_SELECT_SET, ss, NULL, one, block);
                 add_mapping(dcpl, Mapping{v, s, m[1].file, m[1].dset});
                 H5Sclose(v);
                 H5Sclose(s);
             }
             add_mapping(dcpl, m[0]);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 0) does not span whole rows", VERIFY | LOAD},
    {"VirtualDatasetWithoutMappings", INDEX,
     [](const std::string &d) { rewrite_virtual(in(d, kIndex), kExpert, [](hid_t, std::vector<Mapping> &) {}); },
     kIndex, "/optim/v/layers.2.experts.w2 has 0 virtual mappings for 4 rows", VERIFY | LOAD},
    {"MoreMappingsThanRows", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             for (int k = 0; k < 5; k++) {
                 const int r = k % 4;
                 hid_t v = rows({4, 16, 8}, (hsize_t)r, 1), s = rows({2, 16, 8}, (hsize_t)(r % 2), 1);
                 add_mapping(dcpl, Mapping{v, s, m[r / 2].file, m[r / 2].dset});
                 H5Sclose(v);
                 H5Sclose(s);
             }
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 has 5 virtual mappings for 4 rows", VERIFY | LOAD},
    {"RowMappedTwice", INDEX,  // part 1's rows relabelled 1, 2 to match, else the labels differ first
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             replace_space(&m[1].vspace, rows({4, 16, 8}, 1, 2));
             add_all(dcpl, m);
         });
         const int32_t experts[2] = {1, 2};
         set_attr(in(d, kPart1), kExpert, "experts", H5T_STD_I32LE, 2, experts);
     },
     kIndex, "/optim/v/layers.2.experts.w2: row 1 is mapped twice", VERIFY | LOAD},
    {"ExpertLabelsMissing", INDEX,  // without them the check above could not run (review, 2026-12-05)
     [](const std::string &d) { delete_attr(in(d, kPart1), kExpert, "experts"); },
     kPart1, "/optim/v/layers.2.experts.w2: attribute 'experts' is missing", VERIFY | LOAD},
    {"MappingToAnotherExpertsRows", INDEX,  // the two parts' sources swapped (review, 2026-12-05)
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
             std::swap(m[0].file, m[1].file);
             add_all(dcpl, m);
         });
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 0): the part's row 0 holds expert 2, not the mapped "
     "expert 0", VERIFY | LOAD},
    // Only a later row of a part mislabelled: every row of a mapping is checked, not its first
    // (mutation, 2026-12-07).
    {"LastRowLabelledAnotherExpert", INDEX,
     [](const std::string &d) {
         const int32_t experts[2] = {2, 0};
         set_attr(in(d, kPart1), kExpert, "experts", H5T_STD_I32LE, 2, experts);
     },
     kIndex, "/optim/v/layers.2.experts.w2 (virtual mapping 1): the part's row 1 holds expert 0, not the mapped "
     "expert 3", VERIFY | LOAD},
    {"RowsFromNoPart", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) { add_mapping(dcpl, m[0]); });
     },
     kIndex, "/optim/v/layers.2.experts.w2: row 2 comes from no part file", VERIFY | LOAD},
    {"VirtualDatasetOfAnotherType", INDEX,
     [](const std::string &d) {
         rewrite_virtual(in(d, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) { add_all(dcpl, m); },
                         H5T_IEEE_F64LE);
     },
     kIndex, "/optim/v/layers.2.experts.w2 has the wrong data type (little-endian float32 expected)", VERIFY | LOAD},

    // A stored tensor's storage (h5.c h5_dims, h5_check_stored, chunking_of, h5_read_rows): embed is
    // (V = 32, D = 16), stored as one chunk.
    {"ScalarTensor", SINGLE,
     [](const std::string &d) { replace_dataset(in(d, kSingle), "/model/embed", Dataset()); },
     kSingle, "/model/embed has 0 dimensions (1 to 4 expected)", VERIFY | LOAD | INSPECT},
    {"TensorOfFiveDimensions", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {1, 1, 1, 32, 16};
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed has 5 dimensions (1 to 4 expected)", VERIFY | LOAD | INSPECT},
    {"ContiguousTensor", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = {32, 16};
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed is not chunked, so it carries no Fletcher-32 checksum", VERIFY | LOAD | INSPECT},
    {"TensorWithoutChecksumFilter", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {32, 16};
         ds.fletcher = false;
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed carries no Fletcher-32 checksum filter", VERIFY | LOAD | INSPECT},
    {"CompressedChunks", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {32, 16};
         ds.deflate = true;
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed: a chunk holds {N} bytes, not 2052 (damaged, or not written by moelab)",
     VERIFY | LOAD | INSPECT},
    {"ChunkStoredWithoutItsChecksum", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {32, 16};
         ds.write = false;
         replace_dataset(in(d, kSingle), "/model/embed", ds);
         write_raw_chunk(in(d, kSingle), "/model/embed", 1);
     },
     kSingle, "/model/embed: a chunk was stored without its Fletcher-32 checksum", VERIFY | LOAD | INSPECT},
    {"ChunksNotOfWholeRows", SINGLE,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = {32, 16};
         ds.chunk = {16, 8};
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed: unsupported chunk shape (not whole trailing rows)", VERIFY | LOAD | INSPECT},
    {"ChunkLargerThanTheTensor", SINGLE,  // allowed by HDF5 along an unlimited axis
     [](const std::string &d) {
         Dataset ds;
         ds.dims = {32, 16};
         ds.maxdims = {H5S_UNLIMITED, 16};
         ds.chunk = {64, 16};
         replace_dataset(in(d, kSingle), "/model/embed", ds);
     },
     kSingle, "/model/embed: chunk dimension 0 is 64 for an extent of 32", VERIFY | LOAD | INSPECT},

    // Values no checkpoint holds, and a shape the stored config's model does not have: inspect
    // listed them (with a NaN count, or the file's shape) where verify and the loader refused
    // (sweep, 2026-12-05).
    {"NaNInAMoment", SINGLE,
     [](const std::string &d) { replace_filled(in(d, kSingle), "/optim/m/embed", H5T_IEEE_F32LE, 32, 16, NAN); },
     kSingle, "/optim/m/embed holds 512 NaN or infinite values (saved by a diverged run)", VERIFY | LOAD | INSPECT},
    {"NegativeSecondMoment", SINGLE,  // a resumed run took it, and ended at its save "diverged"
     [](const std::string &d) { replace_filled(in(d, kSingle), "/optim/v/embed", H5T_IEEE_F32LE, 32, 16, -1); },
     kSingle, "/optim/v/embed holds 512 negative second moments", VERIFY | LOAD | INSPECT},
    {"TinyNegativeSecondMoment", SINGLE,  // any value below 0, however small, is no second moment
     [](const std::string &d) { replace_filled(in(d, kSingle), "/optim/v/embed", H5T_IEEE_F32LE, 32, 16, -1e-35); },
     kSingle, "/optim/v/embed holds 512 negative second moments", VERIFY | LOAD | INSPECT},
    {"TensorOfAnotherShape", SINGLE,
     [](const std::string &d) { replace_filled(in(d, kSingle), "/model/embed", H5T_IEEE_F32LE, 32, 8, 0); },
     kSingle, "dataset /model/embed has shape (32, 8) but the model expects (32, 16)", VERIFY | LOAD | INSPECT},

    // The /eplb group (format.c open_eplb, ckpt_file_eplb): L = 3 layers, E = 4 experts.
    {"LoadBeyondAnyRun", EPLB,  // near 2^63 the resumed run's own counts overflowed it
     [](const std::string &d) { replace_filled(in(d, kEplb), "/eplb/load", H5T_STD_I64LE, 3, 4, 1e16); },
     kEplb, "/eplb/load holds a count of 10000000000000000, above 1e+15", VERIFY | LOAD | INSPECT},
    {"PlacementOfFloats", EPLB,
     [](const std::string &d) {
         Dataset ds;
         ds.dims = ds.chunk = {3, 4};
         replace_dataset(in(d, kEplb), "/eplb/phy2log", ds);
     },
     kEplb, "/eplb/phy2log has the wrong data type (the documented integer type expected)", VERIFY | LOAD | INSPECT},
    {"PlacementWithARowPerLayerTooMany", EPLB,
     [](const std::string &d) { replace_int32(in(d, kEplb), "/eplb/phy2log", 4, 4, std::vector<int32_t>(16, 0)); },
     kEplb, "/eplb/phy2log should have 3 rows of slots", VERIFY | LOAD | INSPECT},
    {"PlacementWithFewerSlotsThanExperts", EPLB,
     [](const std::string &d) { replace_int32(in(d, kEplb), "/eplb/phy2log", 3, 3, {0, 1, 2, 0, 1, 2, 0, 1, 2}); },
     kEplb, "/eplb/phy2log has 3 slots per layer for 4 experts", VERIFY | LOAD | INSPECT},
    {"PlacementOfAnExpertBeyondE", EPLB,
     [](const std::string &d) {
         replace_int32(in(d, kEplb), "/eplb/phy2log", 3, 4, {-1, -1, -1, -1, 9, 1, 2, 3, 0, 1, 2, 3});
     },
     kEplb, "/eplb/phy2log: layer 1 slot 0 holds expert 9 of 4", VERIFY | LOAD | INSPECT},
    // Expert E itself, one past the last (a bound of > E passed it and marked one element past the
    // seen flags: mutation, 2026-12-07).
    {"PlacementOfExpertE", EPLB,
     [](const std::string &d) {
         replace_int32(in(d, kEplb), "/eplb/phy2log", 3, 4, {-1, -1, -1, -1, 0, 1, 2, 4, 0, 1, 2, 3});
     },
     kEplb, "/eplb/phy2log: layer 1 slot 3 holds expert 4 of 4", VERIFY | LOAD | INSPECT},
    {"CountsOfAnotherIntegerType", EPLB,
     [](const std::string &d) {
         replace_int32(in(d, kEplb), "/eplb/expert_counts", 3, 4, std::vector<int32_t>(12, 0));
     },
     kEplb, "/eplb/expert_counts has the wrong data type (the documented integer type expected)",
     VERIFY | LOAD | INSPECT},

    // Each tensor's `kind` (docs/checkpoint-format.md): read by inspect only until a review found a
    // missing or wrong one passing verify and the loader (2026-12-05).
    {"KindMissing", SINGLE, [](const std::string &d) { delete_attr(in(d, kSingle), "/model/embed", "kind"); },
     kSingle, "/model/embed: attribute 'kind' is missing", VERIFY | LOAD | INSPECT},
    {"KindTooLong", SINGLE,
     [](const std::string &d) { set_str(in(d, kSingle), "/model/embed", "kind", "dense-and-replicated", 21); },
     kSingle, "/model/embed: attribute 'kind' has 21 bytes (at most 15 expected)", VERIFY | LOAD | INSPECT},
    {"KindOfAnotherTensor", SINGLE,
     [](const std::string &d) { set_str(in(d, kSingle), "/model/embed", "kind", "expert", 7); },
     kSingle, "/model/embed is of kind 'expert', but the model's tensor is of kind 'dense'", VERIFY | LOAD},

    // Links (checkpoints/h5.c h5_exists): a checkpoint holds its own objects. An external link read
    // another file past the index's rules for parts, and was called sound (review, 2026-12-05).
    {"TensorAsAnExternalLink", SINGLE,
     [](const std::string &d) {
         delete_link(in(d, kSingle), "/model/embed");
         hid_t f = open_rw(in(d, kSingle));
         check(H5Lcreate_external("../elsewhere/other.h5", "/model/embed", f, "/model/embed", H5P_DEFAULT,
                                  H5P_DEFAULT), "external link");
         H5Fclose(f);
     },
     kSingle, "/model/embed is an external link, not an object of its own", VERIFY | LOAD | INSPECT},
    {"MomentAsASoftLinkToTheWeights", SINGLE,
     [](const std::string &d) {
         delete_link(in(d, kSingle), "/optim/m/embed");
         hid_t f = open_rw(in(d, kSingle));
         check(H5Lcreate_soft("/model/embed", f, "/optim/m/embed", H5P_DEFAULT, H5P_DEFAULT), "soft link");
         H5Fclose(f);
     },
     kSingle, "/optim/m/embed is a soft link, not an object of its own", VERIFY | LOAD | INSPECT},
};

// A case's name in gtest's messages (not its bytes).
void PrintTo(const Case &c, std::ostream *os) { *os << c.name; }

// ---------------------------------------------------------------------------------------------

std::string g_base;  // the sound checkpoints, made once

std::string escape_regex(const std::string &s) {
    std::string r;
    for (char ch : s) {
        if (strchr("\\^$.|?*+()[]{}", ch)) r += '\\';
        r += ch;
    }
    return r;
}

// "checkpoint <dir>/<file>: <message>" as a regular expression ({N}: a number, {dir}: the case's
// directory).
std::string expected(const std::string &dir, const Case &c) {
    std::string msg = c.message, re = escape_regex("checkpoint " + dir + "/" + c.file + ": ");
    for (size_t i = 0; i < msg.size();) {
        if (msg.compare(i, 3, "{N}") == 0) {
            re += "[0-9]+";
            i += 3;
        } else if (msg.compare(i, 5, "{dir}") == 0) {
            re += escape_regex(dir);
            i += 5;
        } else {
            re += escape_regex(std::string(1, msg[i++]));
        }
    }
    return re;
}

void copy_file(const std::string &from, const std::string &to) {
    FILE *in = fopen(from.c_str(), "rb"), *out = fopen(to.c_str(), "wb");
    ASSERT_TRUE(in && out) << from << " -> " << to;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
}

// The loader of `train --resume` in one process, with the test's config (the checkpoints' own).
void load(const std::string &path) {
    const MoeConfig c = tiny();
    State s = blank_state(c, 0, 1);
    CkptShard sh = shard_of(s.m);
    ckpt_load(path.c_str(), &sh, view(s), nullptr);
    free_state(s);
}

class CheckpointDamage : public ::testing::TestWithParam<Case> {
protected:
    static void SetUpTestSuite() {
        core_set_quiet(1);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        g_base = test_tmp_dir("ckpt");
        const MoeConfig c = tiny();
        CkptState st;
        memset(&st, 0, sizeof st);
        st.step = 7;  // at least make_state's AdamW t
        State s = make_state(c, 0, 1);
        CkptShard sh = shard_of(s.m);
        ckpt_save(in(g_base, kSingle).c_str(), &sh, view(s), &st, nullptr);
        std::vector<int> phy2log((size_t)c.L * c.E, -1);
        std::vector<long> counts((size_t)c.L * c.E, 2), load((size_t)c.L * c.E, 5);
        for (int l = c.n_dense_layers; l < c.L; l++)
            for (int p = 0; p < c.E; p++) phy2log[(size_t)l * c.E + p] = p;
        const CkptEplb e = {c.E, phy2log.data(), counts.data(), load.data()};
        ckpt_save(in(g_base, kEplb).c_str(), &sh, view(s), &st, &e);
        free_state(s);
        State h[2] = {make_state(c, 0, 2), make_state(c, 1, 2)};
        for (int r = 0; r < 2; r++) {
            CkptShard hs = shard_of(h[r].m);
            ckpt_save_part(in(g_base, kIndex).c_str(), &hs, view(h[r]));
        }
        ckpt_save_index(in(g_base, kIndex).c_str(), 2, &c, h[0].o.t, &st, nullptr);
        free_state(h[0]);
        free_state(h[1]);
    }

    void SetUp() override {
        // "fast" (fork at the statement): the child must see the case's files.
        GTEST_FLAG_SET(death_test_style, "fast");
        core_set_quiet(1);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    }

    // A fresh directory holding a copy of the base checkpoint's files (and single.h5, which some
    // damage copies over a part); returns the path a reader opens.
    static std::string prepare(const std::string &dir, Base base) {
        EXPECT_EQ(0, mkdir(dir.c_str(), 0755)) << dir;
        std::vector<const char *> files = {kSingle};
        if (base == INDEX) files.insert(files.end(), {kIndex, kPart0, kPart1});
        if (base == EPLB) files.push_back(kEplb);
        for (const char *f : files) copy_file(in(g_base, f), in(dir, f));
        return in(dir, base == SINGLE ? kSingle : base == INDEX ? kIndex : kEplb);
    }
};

// verify, inspect and the loader all take the checkpoint at path (a refusal ends the test).
void every_reader_takes(const std::string &path) {
    FILE *null = fopen("/dev/null", "w");
    verify(path.c_str(), null);
    inspect(path.c_str(), null);
    fclose(null);
    load(path);
}

// The sound checkpoints pass every reader: each case's failure is its damage's.
TEST_F(CheckpointDamage, SoundCheckpointsPass) {
    for (Base base : {SINGLE, INDEX, EPLB}) every_reader_takes(prepare(g_base + "/sound" + std::to_string(base), base));
}

// A mapping whose source selection is "all" (h5py's for an unsliced source; HDF5 1.10 stores it
// without its extent) is the whole part dataset, which every reader takes. It was refused as
// "0 dimensions" (review, 2026-12-05).
TEST_F(CheckpointDamage, SourceSelectionAllIsTheWholeDataset) {
    const std::string dir = g_base + "/source_all", path = prepare(dir, INDEX);
    rewrite_virtual(in(dir, kIndex), kExpert, [](hid_t dcpl, std::vector<Mapping> &m) {
        check(H5Sselect_all(m[1].srcspace), "select all");
        add_all(dcpl, m);
    });
    ASSERT_FALSE(HasFailure());
    every_reader_takes(path);
}

TEST_P(CheckpointDamage, IsRefusedWithItsMessage) {
    const Case &c = GetParam();
    const std::string dir = g_base + "/" + c.name, path = prepare(dir, c.base);
    c.damage(dir);
    ASSERT_FALSE(HasFailure()) << "the damage could not be made";
    const std::string re = expected(dir, c);
    FILE *null = fopen("/dev/null", "w");  // what verify and inspect print before they fail
    if (c.readers & VERIFY) {
        EXPECT_EXIT(verify(path.c_str(), null), ExitedWithCode(2), re) << "ckpt verify";
    }
    if (c.readers & LOAD) {
        EXPECT_EXIT(load(path), ExitedWithCode(2), re) << "the loader (train --resume)";
    }
    if (c.readers & INSPECT) {
        EXPECT_EXIT(inspect(path.c_str(), null), ExitedWithCode(2), re) << "ckpt inspect";
    }
    fclose(null);
}

INSTANTIATE_TEST_SUITE_P(Table, CheckpointDamage, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case> &i) { return std::string(i.param.name); });

}  // namespace
