// framework/core/file.h: inputs that must be regular files (a FIFO refused without blocking), the
// same-file test, outputs written whole or not at all (a failed write leaves nothing, the old file
// stays, and a signal or a fatal error removes the temporary), and stdout's final state.
#include <gtest/gtest.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "tests/util/fsync_fails.h"
#include "tests/util/tmp.h"

namespace {

void write_file(const std::string &p, const char *text) {
    FILE *f = fopen(p.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs(text, f);
    fclose(f);
}

std::string read_file(const std::string &p) {
    FILE *f = fopen(p.c_str(), "r");
    if (!f) return "<missing>";
    char buf[256] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return std::string(buf, n);
}

// fsync fails as set while this lives (tests/util/fsync_fails.h), and syncs again after.
struct FsyncFails {
    FsyncFails(FsyncFailsWhat what, int err) { fsync_fails_set(what, err); }
    ~FsyncFails() { fsync_fails_set(FSYNC_FAILS_NONE, 0); }
};

// The directory's entries other than the given ones (a temporary left behind shows here).
int entries(const std::string &dir) {
    int n = 0;
    if (FILE *p = popen(("ls -A " + dir + " | wc -l").c_str(), "r")) {
        if (fscanf(p, "%d", &n) != 1) n = -1;
        pclose(p);
    }
    return n;
}

// The exit code of body run in a forked child (which must end with exit or _exit), or -1 if it did
// not exit: limits, stdout and exit handlers changed there stay there.
template <typename F>
int in_child(F body) {
    fflush(stdout);  // or a child's exit would print what this process buffered a second time
    const pid_t pid = fork();
    if (pid == 0) {
        body();
        _exit(99);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

TEST(CoreFile, OpenRegularReadsAFileAndRefusesTheRest) {
    const std::string d = test_tmp_dir("file_test"), f = d + "/a.txt", fifo = d + "/pipe";
    write_file(f, "hello");
    const char *why = nullptr;
    FILE *in = core_open_regular(f.c_str(), &why);
    ASSERT_NE(in, nullptr);
    char buf[8] = {0};
    EXPECT_EQ(fread(buf, 1, 5, in), 5u);
    EXPECT_STREQ(buf, "hello");
    fclose(in);
    errno = EIO;
    EXPECT_EQ(core_open_regular(d.c_str(), &why), nullptr);
    EXPECT_STREQ(why, "not a regular file");
    EXPECT_EQ(errno, 0);  // the path's fault: core_path_error(errno) gives exit 2
    // A FIFO with no writer: an open for reading without O_NONBLOCK would wait here for ever.
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EQ(core_open_regular(fifo.c_str(), &why), nullptr);
    EXPECT_STREQ(why, "not a regular file");
    EXPECT_EQ(core_open_regular((d + "/missing").c_str(), &why), nullptr);
    EXPECT_STREQ(why, strerror(ENOENT));
    EXPECT_EQ(errno, ENOENT);
    // No file handle left: the system's failure, in errno for core_path_error's exit 1 (data prepare
    // reported it as a usage error, review 2026-12-05).
    const int rc = in_child([&] {
        struct rlimit lim = {3, 3};  // stdin, stdout and stderr
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0) _exit(10);
        const char *w = nullptr;
        _exit(core_open_regular(f.c_str(), &w) == nullptr && errno == EMFILE ? 0 : 11);
    });
    EXPECT_EQ(rc, 0);
}

TEST(CoreFile, SameFileByDeviceAndInode) {
    const std::string d = test_tmp_dir("file_test"), a = d + "/a", b = d + "/b", l = d + "/link";
    write_file(a, "x");
    write_file(b, "x");
    ASSERT_EQ(link(a.c_str(), l.c_str()), 0);
    EXPECT_TRUE(core_same_file(a.c_str(), a.c_str()));
    EXPECT_TRUE(core_same_file(a.c_str(), l.c_str()));
    EXPECT_TRUE(core_same_file(a.c_str(), (d + "/./a").c_str()));
    EXPECT_FALSE(core_same_file(a.c_str(), b.c_str()));  // same contents, another file
    EXPECT_FALSE(core_same_file(a.c_str(), (d + "/missing").c_str()));
    // Outputs not written yet: the same name in the same directory.
    EXPECT_TRUE(core_same_file((d + "/new").c_str(), (d + "/./new").c_str()));
    EXPECT_FALSE(core_same_file((d + "/new").c_str(), (d + "/new2").c_str()));
    EXPECT_FALSE(core_same_file((d + "/new").c_str(), "/no/such/dir/new"));
}

TEST(CoreFile, OutputAppearsWholeOnClose) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/out.txt";
    write_file(p, "old");
    CoreOut o;
    ASSERT_EQ(core_out_open(&o, p.c_str()), 0);
    fputs("new contents", o.f);
    EXPECT_EQ(read_file(p), "old");  // not replaced before the close
    EXPECT_EQ(core_out_close(&o), 0);
    EXPECT_EQ(read_file(p), "new contents");
    EXPECT_EQ(entries(d), 1);  // no temporary left
}

TEST(CoreFile, AbortedOutputLeavesTheOldFile) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/out.txt";
    write_file(p, "old");
    CoreOut o;
    ASSERT_EQ(core_out_open(&o, p.c_str()), 0);
    fputs("half", o.f);
    core_out_abort(&o);
    EXPECT_EQ(read_file(p), "old");
    EXPECT_EQ(entries(d), 1);
    EXPECT_EQ(core_out_open(&o, (d + "/no/such/dir/x").c_str()), ENOENT);
    EXPECT_EQ(o.f, nullptr);
}

// A symbolic link (to a file, to nothing, a loop) is refused and left as it was, its target too: the
// rename replaced the link by a regular file, and a loop of links was overwritten with exit 0
// (sweep, 2026-12-05); following it would write where the caller's checks never looked (review).
TEST(CoreFile, OutputThroughALinkIsRefused) {
    const std::string d = test_tmp_dir("file_test");
    write_file(d + "/real.txt", "old");
    ASSERT_EQ(symlink("real.txt", (d + "/link").c_str()), 0);
    ASSERT_EQ(symlink("nothing.txt", (d + "/dangling").c_str()), 0);
    ASSERT_EQ(symlink("loop2", (d + "/loop1").c_str()), 0);
    ASSERT_EQ(symlink("loop1", (d + "/loop2").c_str()), 0);
    for (const char *name : {"link", "dangling", "loop1"}) {
        CoreOut o;
        EXPECT_EQ(core_out_open(&o, (d + "/" + name).c_str()), CORE_OUT_LINK) << name;
        EXPECT_EQ(o.f, nullptr);
        struct stat st;
        ASSERT_EQ(lstat((d + "/" + name).c_str(), &st), 0);
        EXPECT_TRUE(S_ISLNK(st.st_mode)) << name;
    }
    EXPECT_EQ(read_file(d + "/real.txt"), "old");
    EXPECT_EQ(entries(d), 5);  // nothing created
    EXPECT_EQ(core_errno_exit_code(CORE_OUT_LINK), CORE_EXIT_USAGE);
}

// A name of up to NAME_MAX bytes is valid, whatever room it leaves for the temporary's suffix: the
// temporary takes the name's first bytes and a hash of it (".tmp-<pid>" after 248 bytes was "File
// name too long"), so that two long names alike in their first bytes, open at once, get
// temporaries of their own (review, 2026-12-05: one truncated the other's).
TEST(CoreFile, OutputOfTheLongestNameIsWritten) {
    const std::string d = test_tmp_dir("file_test"), alike(246, 'f');
    CoreOut o[4];
    const std::string names[4] = {std::string(240, 'f'), alike + "a.svg", alike + "b.json", std::string(255, 'f')};
    for (int k = 0; k < 4; k++) {
        ASSERT_EQ(core_out_open(&o[k], (d + "/" + names[k]).c_str()), 0) << k;
        const char *tmp_name = strrchr(o[k].tmp, '/') + 1;
        EXPECT_LE(strlen(tmp_name), (size_t)NAME_MAX);
        EXPECT_EQ(core_temp_is_stale(tmp_name), 0);  // a temporary of this live process
        fputs(names[k].substr(names[k].size() - 4).c_str(), o[k].f);
    }
    for (int k = 0; k < 4; k++) ASSERT_EQ(core_out_close(&o[k]), 0) << k;
    for (int k = 0; k < 4; k++) EXPECT_EQ(read_file(d + "/" + names[k]), names[k].substr(names[k].size() - 4));
    EXPECT_EQ(entries(d), 4);
    char out[64];
    EXPECT_EQ(core_temp_name(out, sizeof out, "a/b.txt", ".tmp-7"), 0);
    EXPECT_STREQ(out, "a/b.txt.tmp-7");
    EXPECT_EQ(core_temp_name(out, 8, "a/b.txt", ".tmp-7"), ENAMETOOLONG);
}

// A folder that exists but takes no new files (/proc): its own code, not ENOENT, whose "No such file
// or directory" read as if /proc/version did not exist (sweep, 2026-12-05).
TEST(CoreFile, OutputInAFolderThatTakesNoFilesSaysSo) {
    CoreOut o;
    EXPECT_EQ(core_out_open(&o, "/proc/version"), CORE_OUT_NO_CREATE);
    EXPECT_EQ(o.f, nullptr);
    EXPECT_STREQ(core_out_error(CORE_OUT_NO_CREATE),
                 "its folder takes no new files (the temporary beside it cannot be created)");
    EXPECT_EQ(core_errno_exit_code(CORE_OUT_NO_CREATE), CORE_EXIT_USAGE);
}

// A path that exists and is no regular file (a directory, a FIFO, a device) would be replaced by
// the rename: refused at the open, before anything is written, and left as it was.
TEST(CoreFile, OutputOverNoRegularFileIsRefused) {
    const std::string d = test_tmp_dir("file_test"), fifo = d + "/pipe", sub = d + "/sub";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    ASSERT_EQ(mkdir(sub.c_str(), 0700), 0);
    for (const std::string &p : {fifo, sub, std::string("/dev/null")}) {
        CoreOut o;
        EXPECT_EQ(core_out_open(&o, p.c_str()), CORE_OUT_NOT_REGULAR) << p;
        EXPECT_EQ(o.f, nullptr);
    }
    EXPECT_STREQ(core_out_error(CORE_OUT_NOT_REGULAR), "not a regular file");
    EXPECT_STREQ(core_out_error(ENOSPC), strerror(ENOSPC));
    struct stat st;
    ASSERT_EQ(stat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
    EXPECT_EQ(entries(d), 2);  // no temporary made
}

// A write that fails (here past a file-size limit, as a full disk would) is reported by the close,
// and neither the temporary nor a partial file stays. In a child: the limit is the process's.
TEST(CoreFile, FailedWriteLeavesNothing) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/big.bin";
    const int rc = in_child([&] {
        signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of the signal
        struct rlimit r = {4096, 4096};
        setrlimit(RLIMIT_FSIZE, &r);
        CoreOut o;
        if (core_out_open(&o, p.c_str()) != 0) _exit(10);
        static char block[1 << 16];
        fwrite(block, 1, sizeof block, o.f);
        _exit(core_out_close(&o) == EFBIG ? 0 : 11);
    });
    EXPECT_EQ(rc, 0) << "10: open failed, 11: the close did not report EFBIG";
    EXPECT_EQ(entries(d), 0);
}

// A rename that fails at the close (a folder made at the path meanwhile) reports its errno and
// removes the temporary (a mutant that kept it passed before).
TEST(CoreFile, FailedRenameLeavesNoTemporary) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/out.txt";
    CoreOut o;
    ASSERT_EQ(core_out_open(&o, p.c_str()), 0);
    fputs("contents", o.f);
    ASSERT_EQ(mkdir(p.c_str(), 0755), 0);
    ASSERT_EQ(mkdir((p + "/inside").c_str(), 0755), 0);  // not empty: no rename replaces it
    EXPECT_NE(core_out_close(&o), 0);
    EXPECT_EQ(entries(d), 1);  // the folder alone
}

// A sync that fails at the close (a disk that reports its write error only then) is the close's
// error: the old file stays and no temporary is left. A close without the sync, which renames
// bytes the disk may not hold, passed every test before (mutation test, 2026-12-06).
TEST(CoreFile, FailedSyncLeavesTheOldFile) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/out.txt";
    write_file(p, "old");
    CoreOut o;
    ASSERT_EQ(core_out_open(&o, p.c_str()), 0);
    fputs("new contents", o.f);
    {
        FsyncFails fails(FSYNC_FAILS_FILES, EIO);
        EXPECT_EQ(core_out_close(&o), EIO);
    }
    EXPECT_EQ(read_file(p), "old");
    EXPECT_EQ(entries(d), 1);
}

// core_fsync: a directory whose file system cannot sync one (EINVAL) counts as synced, or every
// checkpoint saved there would fail; an I/O error is reported, and so is a file's EINVAL. The close
// of an output does not report its folder's sync: the file is whole and in place by then.
TEST(CoreFile, SyncOfAFolderThatCannotBeSynced) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/f.txt";
    write_file(p, "x");
    {
        FsyncFails fails(FSYNC_FAILS_DIRS, EINVAL);
        EXPECT_EQ(core_fsync(d.c_str()), 0);
        EXPECT_EQ(core_fsync_parent(p.c_str()), 0);
    }
    {
        FsyncFails fails(FSYNC_FAILS_DIRS, EIO);
        EXPECT_EQ(core_fsync(d.c_str()), EIO);
        EXPECT_EQ(core_fsync_parent(p.c_str()), EIO);
        EXPECT_EQ(core_fsync(p.c_str()), 0);  // files still sync
        CoreOut o;
        ASSERT_EQ(core_out_open(&o, p.c_str()), 0);
        fputs("new", o.f);
        EXPECT_EQ(core_out_close(&o), 0);
        EXPECT_EQ(read_file(p), "new");
    }
    FsyncFails fails(FSYNC_FAILS_FILES, EINVAL);
    EXPECT_EQ(core_fsync(p.c_str()), EINVAL);
}

// An exit before the close (a usage error found while writing ends the process with exit 2)
// removes the temporary: in a child, which also shows that its exit leaves the parent's alone.
TEST(CoreFile, ExitBeforeCloseLeavesNothing) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/half.txt", mine = d + "/parent.txt";
    CoreOut parent;
    ASSERT_EQ(core_out_open(&parent, mine.c_str()), 0);
    const int rc = in_child([&] {
        CoreOut o;
        if (core_out_open(&o, p.c_str()) != 0) _exit(10);
        fputs("half", o.f);
        fflush(o.f);
        exit(2);  // atexit handlers run, as after core_usage_error
    });
    EXPECT_EQ(rc, 2);
    EXPECT_EQ(entries(d), 1);  // the parent's temporary only
    EXPECT_EQ(core_out_close(&parent), 0);
    EXPECT_EQ(entries(d), 1);  // now in place
    EXPECT_EQ(read_file(mine), "");
}

// Ctrl-C, kill and mpirun's end of the other ranks (SIGINT, SIGTERM) remove the temporary, and the
// signal still ends the process (the exit status says it died of that signal).
TEST(CoreFile, SignalBeforeCloseLeavesNothing) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
        const std::string d = test_tmp_dir("file_test"), p = d + "/half.txt";
        fflush(stdout);
        const pid_t pid = fork();
        if (pid == 0) {
            CoreOut o;
            if (core_out_open(&o, p.c_str()) != 0) _exit(10);
            fputs("half", o.f);
            fflush(o.f);
            raise(sig);
            _exit(11);
        }
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig) << "signal " << sig << ", status " << status;
        EXPECT_EQ(entries(d), 0) << "signal " << sig;
    }
}

// A fatal error removes the temporaries before its abort hook, which under MPI (MPI_Abort) skips the
// exit handlers; here a hook that leaves by _exit stands in for it.
TEST(CoreFile, FatalErrorBeforeTheAbortHookLeavesNothing) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/ckpt.h5.tmp-1";
    const int rc = in_child([&] {
        write_file(p, "partial");
        core_temp_track(p.c_str());
        core_set_abort_hook([](int code) { _exit(code); });
        core_usage_error("stop");
    });
    EXPECT_EQ(rc, 2);
    EXPECT_EQ(entries(d), 0);
    // Untracked after its rename, a file stays whatever ends the process.
    const std::string kept = d + "/kept";
    EXPECT_EQ(in_child([&] {
        write_file(kept, "whole");
        core_temp_track(kept.c_str());
        core_temp_untrack(kept.c_str());
        core_set_abort_hook([](int code) { _exit(code); });
        core_usage_error("stop");
    }), 2);
    EXPECT_EQ(read_file(kept), "whole");
}

// A temporary folder tracked before its files: an exit removes the files, then the folder.
TEST(CoreFile, TrackedFolderGoesAfterItsFiles) {
    const std::string d = test_tmp_dir("file_test"), folder = d + "/out.tmp-1", file = folder + "/model.safetensors";
    EXPECT_EQ(in_child([&] {
        if (mkdir(folder.c_str(), 0777) != 0) _exit(10);
        core_temp_track(folder.c_str());
        core_temp_track(file.c_str());
        core_temp_track((folder + "/config.json").c_str());  // never written: nothing to remove
        write_file(file, "weights");
        exit(1);
    }), 1);
    EXPECT_EQ(entries(d), 0);
}

// The folders core_make_dirs made go again when the process fails before writing into them, and
// only those: `new/../old/run` made `new` and `run`, and the user's empty `old` stays (review,
// 2026-12-06: the path cut one folder at a time removed `old`); a folder written into stays, and so
// do the ones it is in.
TEST(CoreFile, FoldersMadeGoWhileEmpty) {
    const std::string d = test_tmp_dir("file_test");
    ASSERT_EQ(mkdir((d + "/old").c_str(), 0777), 0);
    EXPECT_EQ(in_child([&] {
        core_make_dirs((d + "/new/../old/run/deeper").c_str(), "output directory");
        core_usage_error("stop");
    }), 2);
    struct stat st;
    EXPECT_EQ(stat((d + "/old").c_str(), &st), 0) << "a folder the user had was removed";
    EXPECT_EQ(entries(d), 1);  // old, empty: new, run and deeper are gone
    EXPECT_EQ(entries(d + "/old"), 0);
    EXPECT_EQ(in_child([&] {
        core_make_dirs((d + "/a/b").c_str(), "output directory");
        write_file(d + "/a/b/kept", "whole");
        core_make_dirs((d + "/c").c_str(), "output directory");
        exit(1);
    }), 1);
    EXPECT_EQ(read_file(d + "/a/b/kept"), "whole");
    EXPECT_NE(stat((d + "/c").c_str(), &st), 0) << "the second folder made, empty, was kept";
}

// Outputs closed as one: every one renamed into place.
TEST(CoreFile, CloseAllRenamesEveryOutput) {
    const std::string d = test_tmp_dir("file_test");
    CoreOut o[3];
    for (int k = 0; k < 3; k++) {
        ASSERT_EQ(core_out_open(&o[k], (d + "/f" + std::to_string(k)).c_str()), 0);
        fprintf(o[k].f, "new %d", k);
    }
    int failed = -1;
    EXPECT_EQ(core_out_close_all(o, 3, &failed), 0);
    EXPECT_EQ(failed, -1);
    EXPECT_EQ(read_file(d + "/f2"), "new 2");
    EXPECT_EQ(entries(d), 3);
}

// The output a write failed on is the one reported, not an earlier one whose buffered bytes fail only
// at its flush (review, 2026-12-06: a full disk in data prepare named its small tokenizer instead of
// the shard that filled the disk). A file-size limit stands in for the full disk, in a child.
TEST(CoreFile, CloseAllReportsTheOutputAWriteFailedOn) {
    const std::string d = test_tmp_dir("file_test");
    const int rc = in_child([&] {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit r = {4096, 4096};
        setrlimit(RLIMIT_FSIZE, &r);
        CoreOut o[3];
        for (int k = 0; k < 3; k++)
            if (core_out_open(&o[k], (d + "/f" + std::to_string(k)).c_str()) != 0) _exit(10);
        static char buffer[1 << 16], block[1 << 16];
        setvbuf(o[0].f, buffer, _IOFBF, sizeof buffer);
        fwrite(block, 1, 8192, o[0].f);          // held in its buffer: fails at the flush
        fwrite(block, 1, sizeof block, o[1].f);  // fails now
        int failed = -1;
        const int err = core_out_close_all(o, 3, &failed);
        for (int k = 0; k < 3; k++) core_out_abort(&o[k]);
        _exit(err != EFBIG ? 11 : failed != 1 ? 12 : 0);
    });
    EXPECT_EQ(rc, 0) << "10: open failed, 11: not EFBIG, 12: another output reported";
    EXPECT_EQ(entries(d), 0);
}

// Signals held around renames wait for the release whichever thread they reach (the review of
// 2026-12-05: a signal mask held them back from the calling thread only, and an OpenMP worker's
// handler removed the temporaries in the middle of export's renames), then end the process as they
// would have, temporaries removed. Holds nest.
TEST(CoreFile, HeldSignalWaitsForTheReleaseInEveryThread) {
    const std::string d = test_tmp_dir("file_test"), p = d + "/held.txt", marker = test_tmp_dir("file_test") + "/reached";
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        CoreOut o;
        if (core_out_open(&o, p.c_str()) != 0) _exit(10);
        core_signals_hold();
        core_signals_hold();
        std::thread([] { pthread_kill(pthread_self(), SIGTERM); }).join();
        if (access(o.tmp, F_OK) != 0) _exit(11);  // removed while held
        core_signals_release();
        if (access(o.tmp, F_OK) != 0) _exit(12);  // the inner release let it through
        write_file(marker, "held until here");
        core_signals_release();
        _exit(13);  // the outer release did not end the process
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status;
    EXPECT_EQ(read_file(marker), "held until here");
    EXPECT_EQ(entries(d), 0);
}

// A training loop's graceful stop (core_signals_defer): the first polite signal is recorded and
// announced, not fatal; the second ends the process with its temporaries removed. With saves 0 (a
// multi-rank run) a SIGTERM during a save (core_signals_saving) ends it at once, a SIGUSR1 does not;
// core_signals_defer(NULL, 0) lets signals end the process again.
TEST(CoreFile, DeferredSignalStopsTheLoopAndASecondEndsIt) {
    struct Case {
        int saves, saving, sig, fatal;
    } cases[] = {{1, 0, SIGTERM, 0}, {1, 1, SIGINT, 0}, {0, 0, SIGHUP, 0}, {0, 1, SIGUSR1, 0}, {0, 1, SIGTERM, 1}};
    for (const Case &k : cases) {
        const std::string d = test_tmp_dir("file_test"), p = d + "/ckpt.h5.tmp-1", err = d + "/err";
        fflush(stdout);
        const pid_t pid = fork();
        if (pid == 0) {
            if (!freopen(err.c_str(), "w", stderr)) _exit(10);
            write_file(p, "partial");
            core_temp_track(p.c_str());
            core_signals_defer("stopping\n", k.saves);
            core_signals_saving(k.saving);
            if (core_signals_stop() != 0) _exit(11);
            raise(k.sig);
            if (core_signals_stop() != k.sig) _exit(12);
            if (access(p.c_str(), F_OK) != 0) _exit(13);  // removed by a deferred signal
            raise(SIGTERM);                                // the second one
            _exit(14);
        }
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == (k.fatal ? k.sig : SIGTERM))
            << "signal " << k.sig << " saves " << k.saves << " saving " << k.saving << ", status " << status;
        EXPECT_EQ(read_file(err), k.fatal ? "" : "stopping\n") << "signal " << k.sig;
        EXPECT_NE(access(p.c_str(), F_OK), 0) << "signal " << k.sig << ": the temporary was left";
    }
    // Deferral off again: the first signal is fatal.
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        core_signals_defer("", 1);
        core_signals_defer(NULL, 0);
        raise(SIGINT);
        _exit(15);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "status " << status;
}

// An output that cannot be written: exit 1 where the device failed, 2 where the path is wrong.
TEST(CoreFile, OutputReportSaysWhoseFailure) {
    EXPECT_EQ(core_out_report(ENOSPC, "cannot write %s", "x"), 1);
    EXPECT_EQ(core_out_report(EIO, "cannot write %s", "x"), 1);
    EXPECT_EQ(core_out_report(ENOENT, "cannot write %s", "x"), 2);
    EXPECT_EQ(core_out_report(CORE_OUT_NOT_REGULAR, "cannot write %s", "x"), 2);
}

// A directory's lock: a second holder is refused while the first holds it, in this process (another
// open) or another, and gets it once the first lets go; a missing directory takes no lock.
TEST(CoreFile, DirLockRefusesASecondHolder) {
    const std::string d = test_tmp_dir("file_test");
    const int fd = core_dir_lock(d.c_str());
    ASSERT_GE(fd, 0);
    EXPECT_EQ(core_dir_lock(d.c_str()), CORE_DIR_BUSY);
    EXPECT_EQ(in_child([&] { _exit(core_dir_lock(d.c_str()) == CORE_DIR_BUSY ? 0 : 11); }), 0);
    core_dir_unlock(fd);
    const int again = core_dir_lock(d.c_str());
    EXPECT_GE(again, 0);
    core_dir_unlock(again);
    EXPECT_EQ(core_dir_lock((d + "/missing").c_str()), CORE_DIR_NO_LOCK);
}

TEST(CoreFile, StaleTemporaryNames) {
    const pid_t dead = fork();
    if (dead == 0) _exit(0);
    ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
    const std::string me = std::to_string(getpid()), gone = std::to_string(dead);
    EXPECT_EQ(core_temp_is_stale(("step_3.h5.tmp-" + gone).c_str()), 1);
    EXPECT_EQ(core_temp_is_stale(("train.bin.tmp-" + me).c_str()), 0);
    // A process that has ended but is not reaped yet (a zombie) writes nothing either.
    const pid_t zombie = fork();
    if (zombie == 0) _exit(0);
    std::string state;
    for (int i = 0; i < 1000 && state != "Z"; i++) {  // until it has ended
        usleep(1000);
        FILE *f = fopen(("/proc/" + std::to_string(zombie) + "/stat").c_str(), "r");
        char buf[256] = "";
        if (f) {
            buf[fread(buf, 1, sizeof buf - 1, f)] = '\0';
            fclose(f);
        }
        const char *paren = strrchr(buf, ')');
        state = paren ? std::string(paren + 2, 1) : "";
    }
    ASSERT_EQ(state, "Z");
    EXPECT_EQ(core_temp_is_stale(("step_3.h5.tmp-" + std::to_string(zombie)).c_str()), 1);
    ASSERT_EQ(waitpid(zombie, nullptr, 0), zombie);
    for (const char *name : {"step_3.h5", "out.tmp-Ab12cd", "a.tmp-", "a.tmp-12x", "a.tmp--5", "a.tmp-0"})
        EXPECT_EQ(core_temp_is_stale(name), -1) << name;
}

// core_read_all: a file read whole and NUL-terminated; one of /proc (a stated size of 0 bytes) read to
// its end; a cap refused with the size; a read error's errno.
TEST(CoreFile, ReadAllReadsAFileWhole) {
    const std::string d = test_tmp_dir("file_test"), f = d + "/a.txt", empty = d + "/empty.txt";
    write_file(f, "hello");
    write_file(empty, "");
    const char *why = nullptr;
    char *buf = nullptr;
    size_t len = 0;
    FILE *in = core_open_regular(f.c_str(), &why);
    ASSERT_NE(in, nullptr);
    EXPECT_EQ(core_read_all(in, 100, &buf, &len), 0);
    EXPECT_EQ(len, 5u);
    EXPECT_STREQ(buf, "hello");
    core_free(buf);
    rewind(in);
    EXPECT_EQ(core_read_all(in, 5, &buf, &len), 0);  // exactly the most it may read
    EXPECT_EQ(len, 5u);
    core_free(buf);
    rewind(in);
    EXPECT_EQ(core_read_all(in, 4, &buf, &len), EFBIG);
    EXPECT_EQ(len, 5u);  // the stated size
    EXPECT_EQ(buf, nullptr);
    fclose(in);
    in = core_open_regular(empty.c_str(), &why);
    ASSERT_NE(in, nullptr);
    EXPECT_EQ(core_read_all(in, 100, &buf, &len), 0);
    EXPECT_EQ(len, 0u);
    EXPECT_STREQ(buf, "");
    core_free(buf);
    fclose(in);
    in = core_open_regular("/proc/self/status", &why);
    ASSERT_NE(in, nullptr);
    EXPECT_EQ(core_read_all(in, SIZE_MAX, &buf, &len), 0);
    EXPECT_GT(len, 0u);
    EXPECT_EQ(strlen(buf), len);
    EXPECT_EQ(strncmp(buf, "Name:", 5), 0);
    core_free(buf);
    rewind(in);
    EXPECT_EQ(core_read_all(in, 10, &buf, &len), EFBIG);
    EXPECT_GT(len, 10u);  // what was read before the cap was passed
    fclose(in);
    // A file of /sys states a page and holds less: what it holds (it was "changed while it was read").
    in = core_open_regular("/sys/devices/system/cpu/online", &why);
    ASSERT_NE(in, nullptr) << "no /sys here";
    struct stat sys;
    ASSERT_EQ(fstat(fileno(in), &sys), 0);
    EXPECT_EQ(core_read_all(in, SIZE_MAX, &buf, &len), 0);
    EXPECT_GT(len, 0u);
    EXPECT_LT((long long)len, (long long)sys.st_size);
    EXPECT_EQ(buf[0], '0');  // "0-N": the first CPU online
    core_free(buf);
    fclose(in);
    in = fopen(d.c_str(), "rb");  // a directory opens, but its read fails
    ASSERT_NE(in, nullptr);
    EXPECT_EQ(core_read_all(in, SIZE_MAX, &buf, &len), EISDIR);
    EXPECT_EQ(buf, nullptr);
    fclose(in);
    EXPECT_STREQ(core_read_error(CORE_READ_CHANGED), "changed while it was read");
    EXPECT_STREQ(core_read_error(ENOENT), strerror(ENOENT));
}

TEST(CoreFile, NulLine) {
    EXPECT_EQ(core_nul_line("a\nb\n", 4), 0);
    EXPECT_EQ(core_nul_line("\0", 1), 1);
    EXPECT_EQ(core_nul_line("a\nb\0\nc", 6), 2);
    EXPECT_EQ(core_nul_line("a\n\n\n\0", 5), 4);
    EXPECT_EQ(core_nul_line("ab\0", 2), 0);  // only the n bytes given are looked at
}

// Output written to a full device: the status says so (a command must not exit 0 then).
TEST(CoreFile, StdoutStatusSeesAFullDevice) {
    const int rc = in_child([] {
        if (!freopen("/dev/full", "w", stdout)) _exit(10);
        printf("lost\n");
        _exit(core_stdout_status() == ENOSPC ? 0 : 11);
    });
    EXPECT_EQ(rc, 0) << "10: no /dev/full, 11: the status missed ENOSPC";
    EXPECT_EQ(core_stdout_status(), 0);  // this process's stdout is fine
}

// The same when the write that failed was printf's own, its buffer full (an 8 KiB --help): stdio
// drops the buffer and keeps no errno, and the status said "Input/output error" (2026-12-07).
TEST(CoreFile, StdoutStatusSeesAFullDeviceThatPrintfMet) {
    const int rc = in_child([] {
        if (!freopen("/dev/full", "w", stdout)) _exit(10);
        const std::string big(1 << 16, 'x');  // larger than any stdio buffer
        fputs(big.c_str(), stdout);
        _exit(core_stdout_status() == ENOSPC ? 0 : 11);
    });
    EXPECT_EQ(rc, 0) << "10: no /dev/full, 11: the status missed ENOSPC";
}

// The same after a log line, which is flushed at once: the stream's later flushes fail with no errno
// of their own, and the status said "Input/output error" (review 2026-12-05).
TEST(CoreFile, StdoutStatusKeepsTheCauseOfALogLinesFailure) {
    const int rc = in_child([] {
        if (!freopen("/dev/full", "w", stdout)) _exit(10);
        core_info("lost");  // nothing left in the buffer: the final flush itself succeeds
        _exit(core_stdout_status() == ENOSPC ? 0 : 11);
    });
    EXPECT_EQ(rc, 0) << "10: no /dev/full, 11: the status lost the ENOSPC of the first flush";
}

}  // namespace
