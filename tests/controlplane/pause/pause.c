/* The pod sandbox's only process: it holds the pod's namespaces open and reaps orphans.
 *
 * Written for the test suite's node (tests/controlplane/images.py builds it with
 * `gcc -Os -static` into a one-file image). It waits for signals and does nothing else:
 * SIGINT and SIGTERM end it with status 0 (the runtime stops the sandbox that way);
 * SIGCHLD reaps every exited child (as PID 1 of a shared PID namespace it inherits them).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int handle(int sig, void (*fn)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = sig == SIGCHLD ? (SA_RESTART | SA_NOCLDSTOP) : 0;
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("mlvisor pause 1");
        return 0;
    }
    if (getpid() != 1) {
        fputs("pause: warning: not PID 1, orphans will not be reaped here\n", stderr);
    }
    if (handle(SIGINT, on_stop) || handle(SIGTERM, on_stop) || handle(SIGCHLD, on_child)) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
