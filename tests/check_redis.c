/*
 * check_redis.c: unit tests of redis.c's pure part: the RESP formatter of
 * the hot path must give exactly the bytes of hiredis' own.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <hiredis/hiredis.h>

#include "redis.h"

/* Ours and hiredis' for the same arguments: the same bytes. */
static void
t_same_as_hiredis(int argc, const char **argv, const size_t *argvlen)
{
	char *ours = NULL, *theirs = NULL;
	int n = redis_format_argv(&ours, argc, argv, argvlen);
	int m = redisFormatCommandArgv(&theirs, argc, argv, argvlen);

	ck_assert_int_eq(n, m);
	ck_assert_int_ge(n, 0);
	ck_assert_msg(memcmp(ours, theirs, (size_t)n) == 0, "%d-argument command differs", argc);
	free(ours);
	redisFreeCommand(theirs);
}

START_TEST(test_format_fixed)
{
	const char *xadd[] = { "XADD", "sb:market_data", "MAXLEN", "~", "1000000", "*",
	    "d", "{\"px\":101}" };
	const char *empty[] = { "SET", "", "" };
	const char *bin[] = { "SET", "k\r\n\0v", "x" };
	const size_t binlen[] = { 3, 5, 1 };

	t_same_as_hiredis(8, xadd, NULL);
	t_same_as_hiredis(3, empty, NULL);
	t_same_as_hiredis(3, bin, binlen);
	t_same_as_hiredis(0, NULL, NULL);
}
END_TEST

/* Lengths across every digit boundary, and many arguments. */
START_TEST(test_format_lengths)
{
	static char big[100001];
	static const size_t lens[] = { 0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 9999, 10000,
	    99999, 100000 };
	const char *argv[120];
	size_t argvlen[120];
	uint32_t x = 12345;

	for (size_t i = 0; i < sizeof(big); i++) {
		x = x * 1103515245u + 12345u;
		big[i] = (char)(x >> 16);
	}
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		argv[0] = "SET";
		argvlen[0] = 3;
		argv[1] = big;
		argvlen[1] = lens[i];
		t_same_as_hiredis(2, argv, argvlen);
	}
	for (int n = 1; n <= 120; n++) {
		argv[n - 1] = big + n;
		argvlen[n - 1] = (size_t)n * 7 % 130;
		t_same_as_hiredis(n, argv, argvlen);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("redis");
	TCase *tc = tcase_create("format");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_format_fixed);
	tcase_add_test(tc, test_format_lengths);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
