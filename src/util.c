/* util.c: id maps, entry-id sets and clocks (see util.h). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

uint64_t
util_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int64_t
util_wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
util_streq(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

struct idmap_entry {
	uint64_t id;
	void *p;
	struct idmap_entry *next;
};

int
idmap_init(struct idmap *m, size_t nbuckets)
{
	m->buckets = calloc(nbuckets, sizeof(*m->buckets));
	m->nbuckets = nbuckets;
	m->count = 0;
	return m->buckets == NULL ? -1 : 0;
}

void
idmap_free(struct idmap *m)
{
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct idmap_entry *e = m->buckets[i], *next;
		for (; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(m->buckets);
	memset(m, 0, sizeof(*m));
}

static size_t
idmap_bucket(const struct idmap *m, uint64_t id)
{
	/* callers check nbuckets: a freed map finds nothing */
	return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 17) % m->nbuckets;
}

int
idmap_put(struct idmap *m, uint64_t id, void *p)
{
	struct idmap_entry *e;
	size_t b;

	if (m->nbuckets == 0 || (e = malloc(sizeof(*e))) == NULL)
		return -1;
	b = idmap_bucket(m, id);
	e->id = id;
	e->p = p;
	e->next = m->buckets[b];
	m->buckets[b] = e;
	m->count++;
	return 0;
}

void *
idmap_get(const struct idmap *m, uint64_t id)
{
	if (m->nbuckets == 0)
		return NULL;
	for (struct idmap_entry *e = m->buckets[idmap_bucket(m, id)]; e; e = e->next)
		if (e->id == id)
			return e->p;
	return NULL;
}

void
idmap_del(struct idmap *m, uint64_t id)
{
	struct idmap_entry **pp;

	if (m->nbuckets == 0)
		return;
	pp = &m->buckets[idmap_bucket(m, id)];

	for (; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct idmap_entry *e = *pp;
			*pp = e->next;
			free(e);
			m->count--;
			return;
		}
	}
}

void
idset_init(struct idset *s)
{
	memset(s, 0, sizeof(*s));
}

void
idset_free(struct idset *s)
{
	free(s->slots);
	memset(s, 0, sizeof(*s));
}

static int
idset_live(const struct idset_slot *sl)
{
	return sl->state == IDSET_LIVE;
}

static size_t
idset_hash(uint64_t ms, uint64_t seq, size_t cap)
{
	return (size_t)(((ms * 0x9e3779b97f4a7c15ull) ^ (seq * 0xc2b2ae3d27d4eb4full)) >> 7) &
	    (cap - 1);
}

static int
idset_grow(struct idset *s)
{
	size_t ncap = s->cap ? s->cap * 2 : 16;
	struct idset_slot *old = s->slots, *ns;
	size_t oldcap = s->cap;

	/* Mostly deleted slots: rehash at the same size. */
	if (s->count * 4 < s->cap)
		ncap = s->cap;
	ns = calloc(ncap, sizeof(*ns));	/* all IDSET_EMPTY */
	if (ns == NULL)
		return -1;
	s->slots = ns;
	s->cap = ncap;
	s->count = s->used = 0;
	for (size_t i = 0; i < oldcap; i++)
		if (idset_live(&old[i]))
			idset_add(s, old[i].ms, old[i].seq, old[i].at_ns, old[i].attempt);
	free(old);
	return 0;
}

int
idset_add(struct idset *s, uint64_t ms, uint64_t seq, uint64_t at_ns, uint32_t attempt)
{
	size_t i;

	if ((s->used + 1) * 4 > s->cap * 3 && idset_grow(s) != 0)
		return -1;
	for (i = idset_hash(ms, seq, s->cap); s->slots[i].state != IDSET_EMPTY;
	    i = (i + 1) & (s->cap - 1)) {
		if (idset_live(&s->slots[i]) && s->slots[i].ms == ms && s->slots[i].seq == seq) {
			s->slots[i].at_ns = at_ns;
			s->slots[i].attempt = attempt;
			return 0;
		}
	}
	s->slots[i] = (struct idset_slot){ ms, seq, at_ns, attempt, IDSET_LIVE };
	s->count++;
	s->used++;
	return 0;
}

static struct idset_slot *
idset_find(const struct idset *s, uint64_t ms, uint64_t seq)
{
	if (s->cap == 0)
		return NULL;
	for (size_t i = idset_hash(ms, seq, s->cap); s->slots[i].state != IDSET_EMPTY;
	    i = (i + 1) & (s->cap - 1))
		if (idset_live(&s->slots[i]) && s->slots[i].ms == ms && s->slots[i].seq == seq)
			return &s->slots[i];
	return NULL;
}

int
idset_take(struct idset *s, uint64_t ms, uint64_t seq, uint64_t *at_ns, uint32_t *attempt)
{
	struct idset_slot *sl = idset_find(s, ms, seq);

	if (sl == NULL)
		return -1;
	*at_ns = sl->at_ns;
	*attempt = sl->attempt;
	sl->state = IDSET_DELETED;	/* tombstone: keeps probe chains intact */
	s->count--;
	return 0;
}

int
idset_has(const struct idset *s, uint64_t ms, uint64_t seq)
{
	return idset_find(s, ms, seq) != NULL;
}

const struct idset_slot *
idset_next(const struct idset *s, size_t *i)
{
	for (; *i < s->cap; (*i)++)
		if (idset_live(&s->slots[*i]))
			return &s->slots[(*i)++];
	return NULL;
}
