/* The split of tensors among ranks and the join of per-tensor values (src/dist/dist.c),
 * against owners worked out by hand from the rule (largest cost first, to the least loaded
 * rank, ties to the lowest index and rank), and a brute-force bound on the balance. */
#include "dist/dist.h"
#include "nufilt_status.h"
#include "testutil.h"

START_TEST(test_split_by_hand)
{
    /* costs 5 1 4 2 3 2 over 2 ranks: 5 -> r0 (0|0), 4 -> r1 (5|0), 3 -> r1 (5|4),
     * 2 (index 3) -> r0 (5|7), 2 (index 5) -> r0 (7|7: tie, the lowest rank), 1 -> r1 (9|7) */
    double c[6] = {5, 1, 4, 2, 3, 2};
    int o[6];
    nf_dist_split(c, 6, 2, o);
    int want[6] = {0, 1, 1, 0, 1, 0};
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(o[i], want[i]);
    /* three ranks: 5 -> r0, 4 -> r1, 3 -> r2, 2 (3) -> r2 (5|4|3), 2 (5) -> r1 (5|4|5),
     * 1 -> r0 (5|6|5: r0 and r2 tie, the lowest) */
    int want3[6] = {0, 0, 1, 2, 2, 1};
    nf_dist_split(c, 6, 3, o);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(o[i], want3[i]);
    /* one rank owns everything; more ranks than items leave some empty */
    nf_dist_split(c, 6, 1, o);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(o[i], 0);
    nf_dist_split(c, 2, 4, o);
    ck_assert_int_eq(o[0], 0);
    ck_assert_int_eq(o[1], 1);
}
END_TEST

START_TEST(test_split_balance)
{
    /* greedy largest-first: no rank carries more than the mean plus the largest item (the
     * list scheduling bound), every item has one owner in range, and the same costs give
     * the same owners */
    enum { N = 500 };
    double c[N];
    int o[N], o2[N];
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        c[i] = (double)(x >> 40) * ((i % 7) ? 1.0 : 50.0);
    }
    for (int size = 2; size <= 9; size++) {
        nf_dist_split(c, N, size, o);
        nf_dist_split(c, N, size, o2);
        double load[9] = {0}, total = 0, maxc = 0;
        for (int i = 0; i < N; i++) {
            ck_assert(o[i] >= 0 && o[i] < size);
            ck_assert_int_eq(o[i], o2[i]);
            load[o[i]] += c[i];
            total += c[i];
            if (c[i] > maxc)
                maxc = c[i];
        }
        for (int r = 0; r < size; r++)
            ck_assert_msg(load[r] <= total / size + maxc, "rank %d of %d: %g > %g + %g", r, size,
                          load[r], total / size, maxc);
    }
}
END_TEST

START_TEST(test_join_one_process)
{
    /* without ranks the join leaves every value as it is */
    double v[3] = {1.5, -0.0, 3.0};
    int owner[3] = {0, 1, 2};
    ck_assert_int_eq(nf_dist_active(), 0);
    ck_assert_int_eq(nf_dist_join_owned(v, 3, sizeof *v, owner), NF_OK);
    ck_assert(v[0] == 1.5 && v[2] == 3.0 && signbit(v[1]));
    ck_assert_int_eq(nf_dist_get()->rank, 0);
    ck_assert_int_eq(nf_dist_get()->size, 1);
}
END_TEST

/* A pretend rank 1 of 2 whose join is the OR with what rank 0 would send: the entries this
 * rank does not own must be zeroed before the OR, so that rank 0's values come through. */
static unsigned char other[64];
static int fake_join(void *buf, size_t len)
{
    unsigned char *b = buf;
    for (size_t i = 0; i < len; i++)
        b[i] |= other[i];
    return NF_OK;
}

START_TEST(test_join_owned)
{
    nf_dist fake = *nf_dist_get();
    fake.rank = 1;
    fake.size = 2;
    fake.join = fake_join;
    double mine[4] = {99.0, 2.0, 99.0, -0.0}; /* stale values where rank 0 owns */
    double theirs[4] = {1.0, 0.0, -3.0, 0.0}; /* rank 0 sends zeros where it does not own */
    memcpy(other, theirs, sizeof theirs);
    int owner[4] = {0, 1, 0, 1};
    nf_dist_install(&fake);
    int rc = nf_dist_join_owned(mine, 4, sizeof *mine, owner);
    nf_dist_install(NULL);
    ck_assert_int_eq(rc, NF_OK);
    ck_assert(mine[0] == 1.0 && mine[1] == 2.0 && mine[2] == -3.0);
    ck_assert(mine[3] == 0.0 && signbit(mine[3])); /* the owner's -0.0, bit for bit */
    ck_assert_int_eq(nf_dist_active(), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dist");
    TCase *tc = tcase_create("split");
    tcase_add_test(tc, test_split_by_hand);
    tcase_add_test(tc, test_split_balance);
    tcase_add_test(tc, test_join_one_process);
    tcase_add_test(tc, test_join_owned);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
