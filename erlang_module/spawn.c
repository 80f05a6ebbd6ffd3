/* Starting the helper process.
 *
 * posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), so nothing runs in the
 * child between fork and exec, and a failed exec comes back as the return
 * value).  Every descriptor we make is close-on-exec: the helper gets exactly
 * its three pipes on fds 0/1/2, and processes the user starts later never
 * inherit the channel.  The helper gets its own process group so that a
 * terminal's Ctrl-C reaches Python (which raises KeyboardInterrupt) and not
 * the BEAM, and the signal mask and dispositions Python changed (SIGPIPE is
 * ignored by Python) are reset to the defaults.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <unistd.h>

#include "transport_int.h"

/* Starts argv[0] (a path) with envp; fills the parent's ends of the three
 * pipes (all close-on-exec; from_fd non-blocking).  Returns 0, or an errno
 * value.  No GIL needed; touches no PyObject. */
int
erpy_spawn(char *const argv[], char *const envp[], pid_t *pid,
           int *to_fd, int *from_fd, int *err_fd)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    int rc;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        rc = errno;
        goto fail_pipes;
    }
    if ((rc = posix_spawn_file_actions_init(&fa)) != 0)
        goto fail_pipes;
    if ((rc = posix_spawnattr_init(&at)) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        goto fail_pipes;
    }
    /* dup2 clears close-on-exec on the copies; the originals close at exec. */
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);

    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    sigdelset(&all, SIGKILL);
    sigdelset(&all, SIGSTOP);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);

    rc = posix_spawn(pid, argv[0], &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0)
        goto fail_pipes;

    close(in[0]);
    close(out[1]);
    close(err[1]);
    /* 1 MiB channel pipes (the default is 64 KiB): a large request or reply
     * crosses in a few system calls instead of one per 64 KiB.  Best effort:
     * the kernel may refuse (pipe-max-size, per-user pipe budget). */
    (void)fcntl(in[1], F_SETPIPE_SZ, 1 << 20);
    (void)fcntl(out[0], F_SETPIPE_SZ, 1 << 20);
    *to_fd = in[1];
    *from_fd = out[0];
    *err_fd = err[0];
    fcntl(*from_fd, F_SETFL, fcntl(*from_fd, F_GETFL) | O_NONBLOCK);
    /* Non-blocking too: a CANCEL can then be tried without waiting for room
     * in the pipe (outq.c: writes wait in poll()). */
    fcntl(*to_fd, F_SETFL, fcntl(*to_fd, F_GETFL) | O_NONBLOCK);
    return 0;

fail_pipes:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0) close(in[i]);
        if (out[i] >= 0) close(out[i]);
        if (err[i] >= 0) close(err[i]);
    }
    return rc;
}
