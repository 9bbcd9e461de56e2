/* tests/unit/migrate/mig.c: the migration decision table, without sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "migrate/mig.h"

static struct mig_step step(enum mig_state s, enum mig_event e, bool announced, bool match)
{
    struct mig_facts f = { .announced = announced, .dest_match = match };
    return mig_decide(s, e, &f);
}

static void test_prepared_happy_path(void **state)
{
    struct mig_step st = step(MIG_IDLE, MIG_EV_PREPARE, false, false);
    assert_true(st.legal);
    assert_int_equal(st.next, MIG_LINKING);
    assert_int_equal(st.actions, MIG_DO_LINK_DEST);

    st = step(MIG_LINKING, MIG_EV_DEST_READY, false, true);
    assert_int_equal(st.next, MIG_LINKED);
    assert_true(st.actions & MIG_DO_NOTIFY);
    assert_false(st.actions & MIG_DO_CONFIRM); /* the source has not asked yet */

    st = step(MIG_LINKED, MIG_EV_BEGIN, true, true);
    assert_int_equal(st.next, MIG_CONNECTED);
    assert_int_equal(st.actions, MIG_DO_CONFIRM); /* confirmed at once */

    st = step(MIG_CONNECTED, MIG_EV_CHANNEL_MIGRATE, true, true);
    assert_int_equal(st.next, MIG_SWITCHING);
    assert_int_equal(st.actions, MIG_DO_SWITCH_CHANNEL);
    st = step(MIG_SWITCHING, MIG_EV_CHANNEL_MIGRATE, true, true);
    assert_int_equal(st.next, MIG_SWITCHING);
    st = step(MIG_SWITCHING, MIG_EV_ALL_SWITCHED, true, true);
    assert_int_equal(st.next, MIG_IDLE);
    assert_int_equal(st.actions, MIG_DO_FINISH);
}

static void test_unprepared_path(void **state)
{
    struct mig_step st = step(MIG_IDLE, MIG_EV_BEGIN, true, true);
    assert_int_equal(st.next, MIG_LINKING);
    assert_int_equal(st.actions, MIG_DO_LINK_DEST);
    st = step(MIG_LINKING, MIG_EV_DEST_READY, true, true);
    assert_int_equal(st.next, MIG_CONNECTED);
    assert_true(st.actions & MIG_DO_CONFIRM);
}

static void test_begin_names_another_destination(void **state)
{
    struct mig_step st = step(MIG_LINKED, MIG_EV_BEGIN, true, false);
    assert_int_equal(st.next, MIG_LINKING);
    assert_int_equal(st.actions, MIG_DO_DROP_DEST | MIG_DO_LINK_DEST);
    st = step(MIG_LINKING, MIG_EV_BEGIN, true, false);
    assert_int_equal(st.actions, MIG_DO_DROP_DEST | MIG_DO_LINK_DEST);
    st = step(MIG_LINKING, MIG_EV_BEGIN, true, true);
    assert_int_equal(st.next, MIG_LINKING);
    assert_int_equal(st.actions, 0);
}

static void test_destination_failures(void **state)
{
    /* Announced and linking: the source must hear CONNECT_ERROR. */
    struct mig_step st = step(MIG_LINKING, MIG_EV_DEST_FAILED, true, true);
    assert_int_equal(st.next, MIG_IDLE);
    assert_true(st.actions & MIG_DO_REFUSE);
    assert_true(st.actions & MIG_DO_DROP_DEST);
    /* Prepared only: nobody to refuse. */
    st = step(MIG_LINKING, MIG_EV_DEST_FAILED, false, true);
    assert_false(st.actions & MIG_DO_REFUSE);
    /* Connected: stay on the source; its MIGRATE_CANCEL follows. */
    st = step(MIG_CONNECTED, MIG_EV_DEST_FAILED, true, true);
    assert_int_equal(st.next, MIG_IDLE);
    assert_int_equal(st.actions, MIG_DO_DROP_DEST);
    st = step(MIG_IDLE, MIG_EV_CANCEL, true, true);
    assert_true(st.legal);
    assert_int_equal(st.actions, 0);
    /* Switching: no way back, the caller ends the session. */
    st = step(MIG_SWITCHING, MIG_EV_DEST_FAILED, true, true);
    assert_false(st.legal);
}

static void test_cancel_timeout_switch_host(void **state)
{
    assert_int_equal(step(MIG_CONNECTED, MIG_EV_CANCEL, true, true).next, MIG_IDLE);
    assert_true(step(MIG_LINKED, MIG_EV_CANCEL, false, true).actions & MIG_DO_DROP_DEST);
    struct mig_step st = step(MIG_LINKED, MIG_EV_TIMEOUT, false, true);
    assert_int_equal(st.next, MIG_IDLE);
    assert_int_equal(st.actions, MIG_DO_DROP_DEST);
    st = step(MIG_LINKING, MIG_EV_TIMEOUT, true, true);
    assert_true(st.actions & MIG_DO_REFUSE);
    assert_false(step(MIG_CONNECTED, MIG_EV_TIMEOUT, true, true).legal);
    st = step(MIG_LINKING, MIG_EV_SWITCH_HOST, true, true);
    assert_int_equal(st.next, MIG_IDLE);
    assert_true(st.actions & MIG_DO_DROP_DEST);
}

/* The fresh path: a reattach starts from any state, drops what was being
 * prepared, and ends when every channel has its fresh backend. */
static void test_reattach(void **state)
{
    for (int s = 0; s < MIG_STATE_MAX; s++) {
        struct mig_step st = step((enum mig_state)s, MIG_EV_REATTACH, true, true);
        assert_true(st.legal);
        assert_int_equal(st.next, MIG_REATTACHING);
        assert_true(st.actions & MIG_DO_DROP_DEST);
    }
    struct mig_step st = step(MIG_REATTACHING, MIG_EV_REATTACHED, false, true);
    assert_true(st.legal);
    assert_int_equal(st.next, MIG_IDLE);
    assert_int_equal(st.next == MIG_IDLE && st.actions == 0, 1);
    assert_false(step(MIG_IDLE, MIG_EV_REATTACHED, false, true).legal);
    assert_false(step(MIG_REATTACHING, MIG_EV_PREPARE, false, true).legal);
    assert_false(step(MIG_REATTACHING, MIG_EV_BEGIN, true, true).legal);
    st = step(MIG_REATTACHING, MIG_EV_SWITCH_HOST, false, true);
    assert_true(st.legal);
    assert_int_equal(st.next, MIG_REATTACHING);
}

static void test_illegal_transitions(void **state)
{
    assert_false(step(MIG_IDLE, MIG_EV_CHANNEL_MIGRATE, false, true).legal);
    assert_false(step(MIG_IDLE, MIG_EV_DEST_READY, false, true).legal);
    assert_false(step(MIG_IDLE, MIG_EV_ALL_SWITCHED, false, true).legal);
    assert_false(step(MIG_CONNECTED, MIG_EV_PREPARE, true, true).legal);
    assert_false(step(MIG_SWITCHING, MIG_EV_BEGIN, true, true).legal);
    /* Every state and event has a name; an illegal step keeps the state. */
    for (int s = 0; s < MIG_STATE_MAX; s++) {
        assert_string_not_equal(mig_state_name((enum mig_state)s), "?");
        for (int e = 0; e < MIG_EV_MAX; e++) {
            assert_string_not_equal(mig_event_name((enum mig_event)e), "?");
            struct mig_step st = step((enum mig_state)s, (enum mig_event)e, true, true);
            if (!st.legal)
                assert_int_equal(st.next, s);
        }
    }
    assert_string_equal(mig_state_name(MIG_STATE_MAX), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prepared_happy_path),
        cmocka_unit_test(test_unprepared_path),
        cmocka_unit_test(test_begin_names_another_destination),
        cmocka_unit_test(test_destination_failures),
        cmocka_unit_test(test_cancel_timeout_switch_host),
        cmocka_unit_test(test_reattach),
        cmocka_unit_test(test_illegal_transitions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
