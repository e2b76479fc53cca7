// A byte-flip scan of a checkpoint: with one byte of it damaged, `ckpt verify` never crashes and
// passes exactly the files the loader takes (both exit 0, or both exit 2 with a message). Flipped:
// every byte of the metadata that carries no checksum of its own (the fractal-heap blocks that hold a
// dense group's links), every byte of the rest of the metadata (superblock, object headers, B-trees,
// heap headers: each checksummed; every 32nd byte under AddressSanitizer, where a check costs
// several times more — the suite runs both builds) and a sample of the chunk data (Fletcher-32). HDF5 1.10
// crashes listing the links of a group whose link storage (heap block, heap header or B-tree) is
// damaged; verify used to list them. The checks run in a child process per flipped byte.
#include <fcntl.h>
#include <hdf5.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <string>
#include <vector>

#include "tests/checkpoints/ckpt_test_util.h"

using namespace ckpt_test;

namespace {

#ifdef __SANITIZE_ADDRESS__
const size_t kMetaStride = 32;  // every 32nd checksummed metadata byte
#else
const size_t kMetaStride = 1;  // every one
#endif

// A failed check leaves through the abort hook (exit code 1 or 2) back to run_check.
jmp_buf jump;
void jump_back(int code) { longjmp(jump, code); }

// Runs one check (a call that returns on success and ends through the abort hook otherwise); returns
// 0 or its exit code. HDF5 is shut down after it, so that nothing a failed check left open is reused.
template <class F>
int run_check(F fn) {
    volatile int code = setjmp(jump);
    if (code == 0) fn();
    H5close();
    return code;
}

// Marks the bytes of every chunk of dataset `name` as data (the rest of the file is metadata).
void mark_chunks(hid_t f, const std::string &name, std::vector<char> &kind) {
    hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
    ASSERT_GE(d, 0) << name;
    hid_t fs = H5Dget_space(d);
    hsize_t n = 0;
    ASSERT_GE(H5Dget_num_chunks(d, fs, &n), 0);
    for (hsize_t i = 0; i < n; i++) {
        hsize_t off[4], size;
        unsigned mask;
        haddr_t addr;
        ASSERT_GE(H5Dget_chunk_info(d, fs, i, off, &mask, &addr, &size), 0);
        for (hsize_t b = 0; b < size; b++) kind[addr + b] = 'd';
    }
    H5Sclose(fs);
    H5Dclose(d);
}

// Marks the fractal-heap direct blocks ("FHDB" up to the next HDF5 structure signature or chunk) as
// unchecksummed metadata: HDF5 checksums them only when the heap asks for it, and a group's doesn't.
void mark_heap_blocks(const std::vector<unsigned char> &b, std::vector<char> &kind) {
    static const char *const SIGS[] = {"OHDR", "OCHK", "BTHD", "BTIN", "BTLF", "FRHP", "FHIB", "FHDB",
                                       "FSHD", "FSSE", "SMTB", "SMLI", "GCOL"};
    auto sig_at = [&](size_t i) {
        for (const char *s : SIGS)
            if (i + 4 <= b.size() && memcmp(&b[i], s, 4) == 0) return true;
        return false;
    };
    for (size_t i = 0; i + 4 <= b.size(); i++) {
        if (kind[i] != 'm' || memcmp(&b[i], "FHDB", 4) != 0) continue;
        for (size_t j = i; j < b.size() && kind[j] == 'm' && (j == i || !sig_at(j)); j++) kind[j] = 'h';
    }
}

TEST(CheckpointFlip, VerifyNeverCrashesAndAgreesWithTheLoader) {
    core_set_quiet(1);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    // The reader's own checks, unprobed: the probe process per opened file (ckpt_set_probe) made the
    // scan 2.5 x slower (570 s against 228 s on the 2-core machine), and no single flip crashes HDF5.
    ckpt_set_probe(0);
    // The smallest model (one MoE layer, tied embeddings, no shared expert) whose groups still hold
    // more than 8 links each (HDF5's dense link storage).
    MoeConfig c = tiny();
    c.L = 1;
    c.n_dense_layers = 0;
    c.S = 0;
    c.tie_embeddings = 1;
    const std::string dir = test_tmp_dir("ckpt"), good = dir + "/good.h5", path = dir + "/flip.h5";
    State s = make_state(c, 0, 1);
    CkptShard sh = shard_of(s.m);
    CkptState st;
    memset(&st, 0, sizeof st);
    st.step = 7;  // at least make_state's AdamW t
    st.lineage = 11;
    std::vector<long> counts((size_t)c.L * c.E, 5), load((size_t)c.L * c.E, 2);
    CkptEplb eplb = {0, nullptr, counts.data(), load.data()};
    ckpt_save(good.c_str(), &sh, view(s), &st, &eplb);

    FILE *in = fopen(good.c_str(), "rb");
    std::vector<unsigned char> bytes;
    for (int ch; (ch = fgetc(in)) != EOF;) bytes.push_back((unsigned char)ch);
    fclose(in);
    std::vector<char> kind(bytes.size(), 'm');  // m: metadata, h: unchecksummed heap block, d: chunk data
    hid_t f = H5Fopen(good.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < s.m->reg.n; i++)
            if (g == 0 || s.m->reg.p[i].kind != PARAM_BUFFER)
                mark_chunks(f, std::string(g == 0 ? "/model/" : g == 1 ? "/optim/m/" : "/optim/v/") +
                                   s.m->reg.p[i].name, kind);
    mark_chunks(f, "/eplb/expert_counts", kind);
    mark_chunks(f, "/eplb/load", kind);
    H5Fclose(f);
    mark_heap_blocks(bytes, kind);
    std::vector<size_t> offsets;
    size_t heap = 0;
    for (size_t i = 0; i < bytes.size(); i++) {
        heap += kind[i] == 'h';
        if (kind[i] == 'h' || (kind[i] == 'm' && i % kMetaStride == 0) || (kind[i] == 'd' && i % 1021 == 0))
            offsets.push_back(i);
    }
    ASSERT_GT(heap, 0u) << "no unchecksummed heap block found: the groups are not in dense storage";

    FILE *out = fopen(path.c_str(), "wb");
    fwrite(bytes.data(), 1, bytes.size(), out);
    fclose(out);
    // Children write each flip's two exit codes here (-1: not run, or the check crashed).
    const size_t n = offsets.size();
    int *res = (int *)mmap(NULL, 2 * n * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(res, MAP_FAILED);
    for (size_t i = 0; i < 2 * n; i++) res[i] = -1;
    std::vector<std::string> bad;
    size_t rejected = 0;
    for (size_t k = 0; k < n; k++) {
        const size_t off = offsets[k];
        pid_t pid = fork();
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            core_set_abort_hook(jump_back);
            int fd = open(path.c_str(), O_WRONLY);
            const unsigned char flipped = bytes[off] ^ 0xff;
            if (fd < 0 || pwrite(fd, &flipped, 1, (off_t)off) != 1) _exit(3);
            close(fd);
            res[2 * k] = run_check([&] { verify(path.c_str(), stdout); });
            res[2 * k + 1] = run_check([&] {
                State t = blank_state(c, 0, 1);
                CkptShard ts = shard_of(t.m);
                ckpt_load(path.c_str(), &ts, view(t), nullptr);
            });
            _exit(0);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        int fd = open(path.c_str(), O_WRONLY);
        ASSERT_EQ(1, pwrite(fd, &bytes[off], 1, (off_t)off));
        close(fd);
        const int v = res[2 * k], l = res[2 * k + 1];
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && v == l && (v == 0 || v == 2);
        if (!ok && bad.size() < 20) {
            std::string what = WIFSIGNALED(status) ? "crashed with signal " + std::to_string(WTERMSIG(status)) +
                                                         (v < 0 ? " in verify" : " in the loader")
                                                   : "verify exit " + std::to_string(v) + ", loader exit " +
                                                         std::to_string(l);
            bad.push_back("byte " + std::to_string(off) + " (" +
                          (kind[off] == 'h' ? "heap block" : kind[off] == 'd' ? "chunk data" : "metadata") +
                          "): " + what);
        }
        rejected += v == 2;
    }
    munmap(res, 2 * n * sizeof(int));
    for (const std::string &b : bad) ADD_FAILURE() << b;
    printf("%zu of %zu bytes flipped (%zu in unchecksummed heap blocks), %zu rejected by both\n", n,
           bytes.size(), heap, rejected);
    // Flips in unused space are harmless; most must still be caught (the scan would be blind otherwise).
    EXPECT_GT(rejected, n / 2);
    free_state(s);
}

}  // namespace
