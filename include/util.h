/*
 * util.h: small containers and clocks shared by the subsystems.
 *  - idmap: uint64 id -> pointer, so callbacks find objects by id (a stale
 *    id finds nothing instead of freed memory).
 *  - idset: stream entry id (ms, seq) -> (time, attempt), a subscription's
 *    unacknowledged deliveries.
 */
#ifndef UTIL_H
#define UTIL_H

#include <stddef.h>
#include <stdint.h>

uint64_t util_now_ns(void);	/* monotonic */
int64_t  util_wall_ms(void);	/* since the epoch */
int      util_streq(const char *a, const char *b);	/* both NULL counts as equal */

struct idmap_entry;
struct idmap {
	struct idmap_entry **buckets;
	size_t nbuckets, count;
};
int   idmap_init(struct idmap *m, size_t nbuckets);
void  idmap_free(struct idmap *m);
int   idmap_put(struct idmap *m, uint64_t id, void *p);
void *idmap_get(const struct idmap *m, uint64_t id);
void  idmap_del(struct idmap *m, uint64_t id);

enum idset_state { IDSET_EMPTY, IDSET_LIVE, IDSET_DELETED };

struct idset_slot {
	uint64_t ms, seq;
	uint64_t at_ns;
	uint32_t attempt;
	uint8_t  state;		/* enum idset_state */
};
struct idset {
	struct idset_slot *slots;
	size_t cap, count, used;	/* used counts deleted slots too */
};
void idset_init(struct idset *s);
void idset_free(struct idset *s);
int  idset_add(struct idset *s, uint64_t ms, uint64_t seq, uint64_t at_ns, uint32_t attempt);
/* Removes and returns the slot's values; -1 when absent. */
int  idset_take(struct idset *s, uint64_t ms, uint64_t seq, uint64_t *at_ns, uint32_t *attempt);
int  idset_has(const struct idset *s, uint64_t ms, uint64_t seq);
/* Iterate: i from 0; returns the next live slot or NULL. */
const struct idset_slot *idset_next(const struct idset *s, size_t *i);

#endif
