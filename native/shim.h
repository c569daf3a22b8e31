/*
 * The C interface of shim.cc, the only C++ in mod_tsgi: libnode's embedder API
 * (process init; Environments, each running on its own thread and known by its slot;
 * stop; teardown).
 */
#ifndef TSGI_SHIM_H
#define TSGI_SHIM_H

#include <stddef.h>
#include <node_api.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;

typedef struct {
    void *data;
    /* Registers the "tsgi" linked binding (process._linkedBinding('tsgi')). */
    napi_addon_register_func register_binding;
    /* The bootstrap has loaded; the event loop is about to run. */
    void (*on_ready)(void *data);
    /* process.exit(code) was called from JS; the Environment stops after this returns. */
    void (*on_exit)(void *data, int code);
    /* The event loop has ended: close every handle of ours on `loop` now. */
    void (*on_teardown)(void *data, struct uv_loop_s *loop);
} tsgi_shim_hooks_t;

/* Once per process, on the Node thread: node, the V8 platform (platform_threads workers), V8. */
int tsgi_shim_process_init(int argc, const char *const *argv, int platform_threads, char *err, size_t errlen);

/* Where another thread finds the Environment a tsgi_shim_run runs, to stop it. One per
 * application group; NULL when out of memory. */
typedef struct tsgi_shim_slot tsgi_shim_slot_t;
tsgi_shim_slot_t *tsgi_shim_slot_new(void);
void tsgi_shim_slot_free(tsgi_shim_slot_t *slot);

/* On the calling thread: creates an Environment (its own isolate and event loop) with the
 * shared platform, loads bootstrap_source, runs the event loop until the Environment is
 * stopped, then destroys it. Returns 0, or -1 with err filled in. */
int tsgi_shim_run(tsgi_shim_slot_t *slot, const char *bootstrap_source, const tsgi_shim_hooks_t *hooks, char *err,
                  size_t errlen);

/* Any thread: stops the slot's running Environment; forever=1 also stops one not yet started. */
void tsgi_shim_stop(tsgi_shim_slot_t *slot, int forever);

/* At child exit, after the last tsgi_shim_run of every slot has returned. */
void tsgi_shim_teardown_process(void);

#ifdef __cplusplus
}
#endif

#endif
