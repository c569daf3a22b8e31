// The libnode embedder calls mod_tsgi needs, behind a C interface (shim.h). All the C++
// of the module is here; the binding (Node-API) and everything Apache-facing are C.
// Choices and their reasons: shared/reference/embedding.md §2.2 and §2.6.
#include "shim.h"

#include <node.h>
#include <uv.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace {

// InitializeOncePerProcess flags (embedding.md §2.2): the process is Apache's. Node must
// not take signals (P3, P4), stdio (P11), resource limits or large pages, must not read
// NODE_OPTIONS from Apache's environment (P13), and V8 and its platform are created
// here, on the Node thread, so the platform's workers inherit its signal mask.
constexpr uint64_t kProcessFlags =
    node::ProcessInitializationFlags::kDisableNodeOptionsEnv |
    node::ProcessInitializationFlags::kNoStdioInitialization |
    node::ProcessInitializationFlags::kNoDefaultSignalHandling |
    node::ProcessInitializationFlags::kNoInitializeV8 |
    node::ProcessInitializationFlags::kNoInitializeNodeV8Platform |
    node::ProcessInitializationFlags::kNoAdjustResourceLimits |
    node::ProcessInitializationFlags::kNoUseLargePages |
    node::ProcessInitializationFlags::kNoPrintHelpOrVersionOutput;
static_assert(kProcessFlags == 0x1CF2, "the process flags measured in embedding.md");

// Environment flags: no inspector, ever (P4); no process-wide state (cwd, umask, uid)
// owned by JS; no global module search paths. Never kDefaultFlags.
constexpr uint64_t kEnvironmentFlags =
    node::EnvironmentFlags::kNoGlobalSearchPaths | node::EnvironmentFlags::kNoCreateInspector;
static_assert(kEnvironmentFlags == 640, "the environment flags measured in embedding.md");

std::unique_ptr<node::InitializationResult> g_init;
std::unique_ptr<node::MultiIsolatePlatform> g_platform;

void set_error(char *err, size_t errlen, const std::string &msg) {
  if (err && errlen > 0) std::snprintf(err, errlen, "%s", msg.c_str());
}

std::string join(const std::vector<std::string> &v) {
  std::string s;
  for (const auto &e : v) {
    if (!s.empty()) s += "; ";
    s += e;
  }
  return s;
}

}  // namespace

// The running Environment of one application group, for tsgi_shim_stop() from other threads.
struct tsgi_shim_slot {
  std::mutex mutex;
  node::Environment *env = nullptr;
  bool stop_requested = false;
};

extern "C" tsgi_shim_slot_t *tsgi_shim_slot_new(void) { return new (std::nothrow) tsgi_shim_slot(); }

extern "C" void tsgi_shim_slot_free(tsgi_shim_slot_t *slot) { delete slot; }

extern "C" int tsgi_shim_process_init(int argc, const char *const *argv, int platform_threads, char *err,
                                      size_t errlen) {
  std::vector<std::string> args(argv, argv + argc);
  g_init = node::InitializeOncePerProcess(args, static_cast<node::ProcessInitializationFlags::Flags>(kProcessFlags));
  if (!g_init->errors().empty() || g_init->early_return()) {
    set_error(err, errlen, "node::InitializeOncePerProcess failed: " + join(g_init->errors()));
    return -1;
  }
  g_platform = node::MultiIsolatePlatform::Create(platform_threads);
  if (!g_platform) {
    set_error(err, errlen, "node::MultiIsolatePlatform::Create failed");
    return -1;
  }
  v8::V8::InitializePlatform(g_platform.get());
  if (!v8::V8::Initialize()) {
    set_error(err, errlen, "v8::V8::Initialize failed");
    return -1;
  }
  return 0;
}

extern "C" int tsgi_shim_run(tsgi_shim_slot_t *slot, const char *bootstrap_source, const tsgi_shim_hooks_t *hooks,
                             char *err, size_t errlen) {
  std::vector<std::string> errors;
  auto setup = node::CommonEnvironmentSetup::Create(g_platform.get(), &errors, g_init->args(), g_init->exec_args(),
                                                    static_cast<node::EnvironmentFlags::Flags>(kEnvironmentFlags));
  if (!setup) {
    set_error(err, errlen, "node::CommonEnvironmentSetup::Create failed: " + join(errors));
    return -1;
  }
  int rc = 0;
  v8::Isolate *isolate = setup->isolate();
  node::Environment *env = setup->env();
  {
    v8::Locker locker(isolate);
    v8::Isolate::Scope isolate_scope(isolate);
    v8::HandleScope handle_scope(isolate);
    v8::Context::Scope context_scope(setup->context());

    // process.exit() stops this Environment, never the Apache child (P8).
    void *data = hooks->data;
    auto on_exit = hooks->on_exit;
    node::SetProcessExitHandler(env, [on_exit, data](node::Environment *e, int code) {
      if (on_exit) on_exit(data, code);
      node::Stop(e);
    });
    node::AddLinkedBinding(env, "tsgi", hooks->register_binding, 8);

    bool stop_first;
    {
      std::lock_guard<std::mutex> lock(slot->mutex);
      slot->env = env;
      stop_first = slot->stop_requested;
    }
    if (!stop_first) {
      v8::MaybeLocal<v8::Value> loaded = node::LoadEnvironment(env, bootstrap_source);
      if (loaded.IsEmpty()) {
        set_error(err, errlen, "the bootstrap script threw while loading (see the error log)");
        rc = -1;
      } else {
        if (hooks->on_ready) hooks->on_ready(data);
        node::SpinEventLoop(env).FromMaybe(1);
      }
    }
    {
      std::lock_guard<std::mutex> lock(slot->mutex);
      slot->env = nullptr;
    }
    // Our own handles on this loop must be closed before the setup goes
    // (~CommonEnvironmentSetup aborts on open handles).
    if (hooks->on_teardown) hooks->on_teardown(data, setup->event_loop());
    node::Stop(env);
  }
  // Before any V8 disposal (embedding.md §2.6, the teardown segfault).
  setup.reset();
  return rc;
}

extern "C" void tsgi_shim_stop(tsgi_shim_slot_t *slot, int forever) {
  std::lock_guard<std::mutex> lock(slot->mutex);
  if (forever) slot->stop_requested = true;
  if (slot->env) node::Stop(slot->env);
}

extern "C" void tsgi_shim_teardown_process(void) {
  v8::V8::Dispose();
  v8::V8::DisposePlatform();
  g_platform.reset();
  node::TearDownOncePerProcess();
  g_init.reset();
}
