// SPDX-License-Identifier: Apache-2.0
// Not an image: the lab's crun front for containerd >= 1.7 on machines whose crun is older than
// 1.14.3. Those crun releases refuse every config.json whose ociVersion is not 1.0.x ("unknown
// version specified"), and containerd 1.7 writes runtime-spec 1.2.0, 2.1 writes 1.2.1. This
// front turns the minor digit of "ociVersion":"1.N." in the bundle's config.json into 0 in
// place (one byte: the file keeps its size) and execs the real crun with the same argv, so
// crun keeps its pid and the profiler sees one extra exec. Built at `lab up` (startprof.lab.versions).
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#ifndef REAL_CRUN
#define REAL_CRUN "/usr/bin/crun"
#endif

static void relabel(const char *bundle)
{
	char path[4096], head[256];
	const char *key = "\"ociVersion\":\"1.";
	if (strlen(bundle) + sizeof("/config.json") > sizeof(path))
		return;
	strcpy(path, bundle);
	strcat(path, "/config.json");
	int fd = open(path, O_RDWR);
	if (fd < 0)
		return;
	ssize_t n = pread(fd, head, sizeof(head) - 1, 0);
	if (n > 0) {
		head[n] = 0;
		char *at = strstr(head, key);
		if (at && at[strlen(key)] != '0' && at[strlen(key) + 1] == '.')
			pwrite(fd, "0", 1, at - head + strlen(key));
	}
	close(fd);
}

int main(int argc, char **argv)
{
	(void)argc;
	for (char **a = argv + 1; *a; a++) {
		if ((!strcmp(*a, "--bundle") || !strcmp(*a, "-b")) && a[1])
			relabel(a[1]);
		else if (!strncmp(*a, "--bundle=", 9))
			relabel(*a + 9);
	}
	execv(REAL_CRUN, argv);
	return 127;
}
