// SPDX-License-Identifier: Apache-2.0
//
// The lab's application container entrypoint. Its behaviour is chosen by argv so that one
// image serves every container role of a lab pod:
//   app            print a line, then wait until SIGTERM/SIGINT (a long-running container)
//   app init       print a line and exit 0 at once (an init container run to completion)
//   app exit CODE  exit with CODE at once (to exercise failed init containers)
// It exits immediately on SIGTERM, unlike busybox `sleep` as PID 1, so StopContainer measures
// the runtime's work, not a grace period.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_stop(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	struct sigaction stop = { .sa_handler = on_stop };

	if (argc > 1 && strcmp(argv[1], "init") == 0) {
		puts("startprof lab app: init done");
		return 0;
	}
	if (argc > 2 && strcmp(argv[1], "exit") == 0)
		return atoi(argv[2]);

	sigaction(SIGTERM, &stop, NULL);
	sigaction(SIGINT, &stop, NULL);
	puts("startprof lab app: running");
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}
