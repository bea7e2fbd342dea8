// alloynet's Triton backend: a runner for the exported ONNX graph in the server's own process, with ONNX
// Runtime's C API. It checks only what Triton hands it (dtype, shapes, batch); the values of a capture are
// the graph's to check (its status output, alloynet/contract.py), so this backend answers exactly as the stock
// onnxruntime backend and every other runner does.
//
// Why a backend of its own: pytriton's tritonserver ships without the onnxruntime backend, and the Python
// backend hands every request to a stub process (bench/triton_breakdown.py measures that hop).
//
// Declarations: the official headers (tritonserver.h and tritonbackend.h of triton-inference-server/core,
// onnxruntime_c_api.h of microsoft/onnxruntime) are in no package the build can install (the onnxruntime and
// nvidia-pytriton wheels ship libraries only), so the few functions used are declared here by hand. The Triton
// functions agree, argument by argument, and the constants value by value, with tritonserver.h /
// tritonbackend.h of core's r24.10 branch, the release of the tritonserver 2.51 inside nvidia-pytriton 0.7.0
// (backend API 1.19), as check_declarations.py beside this file reports (run it again against a new release's
// headers). The ONNX Runtime slots are the frozen API-version-1 layout of OrtApi, and TRITONBACKEND_Initialize
// probes the library it is linked with before using them.
//
// The model config is read as JSON (TRITONSERVER_MessageSerializeToJson) with RapidJSON (Debian's
// rapidjson-dev, the parser Triton's own backends use). Parameters (serving/triton/repository.py): input_names,
// output_names (the graph's order), intra_op_threads.
//
// Built by infra/serving_env.sh (g++, linked against the libonnxruntime.so of the Triton venv's onnxruntime
// wheel); the Triton entry points resolve against the tritonserver that loads it.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <rapidjson/document.h>

// ---- Triton's C ABI (tritonserver.h / tritonbackend.h, backend API 1.x): what this backend calls -------
extern "C" {
struct TRITONSERVER_Error;
struct TRITONSERVER_Message;
struct TRITONBACKEND_Backend;
struct TRITONBACKEND_Model;
struct TRITONBACKEND_ModelInstance;
struct TRITONBACKEND_Request;
struct TRITONBACKEND_Response;
struct TRITONBACKEND_Input;
struct TRITONBACKEND_Output;

enum TritonCode { kUnknown = 0, kInternal = 1, kNotFound = 2, kInvalidArg = 3, kUnavailable = 4, kUnsupported = 5 };
enum TritonType { kTypeFp32 = 11 };
enum TritonMemory { kMemCpu = 0, kMemCpuPinned = 1, kMemGpu = 2 };
enum TritonArtifact { kArtifactFilesystem = 0 };
const uint32_t kResponseFinal = 1;   // TRITONSERVER_RESPONSE_COMPLETE_FINAL
const uint32_t kReleaseAll = 1;      // TRITONSERVER_REQUEST_RELEASE_ALL
const uint32_t kApiMajor = 1;        // TRITONBACKEND_API_VERSION_MAJOR this file is written against

TRITONSERVER_Error* TRITONSERVER_ErrorNew(int code, const char* msg);
void TRITONSERVER_ErrorDelete(TRITONSERVER_Error* error);
const char* TRITONSERVER_ErrorMessage(TRITONSERVER_Error* error);
TRITONSERVER_Error* TRITONSERVER_MessageSerializeToJson(TRITONSERVER_Message* message, const char** base,
                                                        size_t* byte_size);
TRITONSERVER_Error* TRITONSERVER_MessageDelete(TRITONSERVER_Message* message);

TRITONSERVER_Error* TRITONBACKEND_ApiVersion(uint32_t* major, uint32_t* minor);
TRITONSERVER_Error* TRITONBACKEND_ModelName(TRITONBACKEND_Model* model, const char** name);
TRITONSERVER_Error* TRITONBACKEND_ModelVersion(TRITONBACKEND_Model* model, uint64_t* version);
TRITONSERVER_Error* TRITONBACKEND_ModelRepository(TRITONBACKEND_Model* model, int* artifact_type,
                                                  const char** location);
TRITONSERVER_Error* TRITONBACKEND_ModelConfig(TRITONBACKEND_Model* model, uint32_t config_version,
                                              TRITONSERVER_Message** config);
TRITONSERVER_Error* TRITONBACKEND_ModelSetState(TRITONBACKEND_Model* model, void* state);
TRITONSERVER_Error* TRITONBACKEND_ModelState(TRITONBACKEND_Model* model, void** state);
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceModel(TRITONBACKEND_ModelInstance* instance,
                                                     TRITONBACKEND_Model** model);
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceSetState(TRITONBACKEND_ModelInstance* instance, void* state);
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceState(TRITONBACKEND_ModelInstance* instance, void** state);
TRITONSERVER_Error* TRITONBACKEND_RequestInput(TRITONBACKEND_Request* request, const char* name,
                                               TRITONBACKEND_Input** input);
TRITONSERVER_Error* TRITONBACKEND_InputProperties(TRITONBACKEND_Input* input, const char** name, int* datatype,
                                                  const int64_t** shape, uint32_t* dims_count,
                                                  uint64_t* byte_size, uint32_t* buffer_count);
TRITONSERVER_Error* TRITONBACKEND_InputBuffer(TRITONBACKEND_Input* input, uint32_t index, const void** buffer,
                                              uint64_t* buffer_byte_size, int* memory_type,
                                              int64_t* memory_type_id);
TRITONSERVER_Error* TRITONBACKEND_ResponseNew(TRITONBACKEND_Response** response, TRITONBACKEND_Request* request);
TRITONSERVER_Error* TRITONBACKEND_ResponseOutput(TRITONBACKEND_Response* response, TRITONBACKEND_Output** output,
                                                 const char* name, int datatype, const int64_t* shape,
                                                 uint32_t dims_count);
TRITONSERVER_Error* TRITONBACKEND_OutputBuffer(TRITONBACKEND_Output* output, void** buffer,
                                               uint64_t buffer_byte_size, int* memory_type,
                                               int64_t* memory_type_id);
TRITONSERVER_Error* TRITONBACKEND_ResponseSend(TRITONBACKEND_Response* response, uint32_t send_flags,
                                               TRITONSERVER_Error* error);
TRITONSERVER_Error* TRITONBACKEND_ResponseDelete(TRITONBACKEND_Response* response);
TRITONSERVER_Error* TRITONBACKEND_RequestRelease(TRITONBACKEND_Request* request, uint32_t release_flags);
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportStatistics(
    TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, bool success, uint64_t exec_start_ns,
    uint64_t compute_start_ns, uint64_t compute_end_ns, uint64_t exec_end_ns);
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportBatchStatistics(
    TRITONBACKEND_ModelInstance* instance, uint64_t batch_size, uint64_t exec_start_ns, uint64_t compute_start_ns,
    uint64_t compute_end_ns, uint64_t exec_end_ns);
}

// ---- ONNX Runtime's C API: OrtGetApiBase() and slots of its OrtApi table ---------------------------------
// The table is append-only and its first 102 slots (API version 1) are frozen; these are the indices of the
// functions used here. TRITONBACKEND_Initialize checks them against the library it was linked with.
struct OrtStatus;
struct OrtEnv;
struct OrtSession;
struct OrtSessionOptions;
struct OrtValue;
struct OrtMemoryInfo;
struct OrtTensorTypeAndShapeInfo;
struct OrtApiBase {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};
extern "C" const OrtApiBase* OrtGetApiBase();

namespace ort {
enum Slot : size_t {
  CreateStatus = 0, GetErrorCode = 1, GetErrorMessage = 2, CreateEnv = 3, CreateSession = 7, Run = 9,
  CreateSessionOptions = 10, SetIntraOpNumThreads = 24, SetInterOpNumThreads = 25, SessionGetInputCount = 30,
  SessionGetOutputCount = 31, CreateTensorWithDataAsOrtValue = 49, GetTensorMutableData = 51,
  GetDimensionsCount = 61, GetDimensions = 62, GetTensorTypeAndShape = 65, CreateCpuMemoryInfo = 69,
  ReleaseEnv = 92, ReleaseStatus = 93, ReleaseMemoryInfo = 94, ReleaseSession = 95, ReleaseValue = 96,
  ReleaseTensorTypeAndShapeInfo = 99, ReleaseSessionOptions = 100,
};
const uint32_t kApiVersion = 1;
const int kLogWarning = 2, kErrorInvalidArgument = 2, kTensorFloat = 1, kArenaAllocator = 1, kMemTypeDefault = 0;

const void* const* table = nullptr;

template <typename F>
F fn(Slot slot) { return reinterpret_cast<F>(const_cast<void*>(table[slot])); }

// An OrtStatus* -> message (and the status released); empty when the call succeeded.
std::string take(OrtStatus* status) {
  if (status == nullptr) return "";
  std::string msg = fn<const char* (*)(const OrtStatus*)>(GetErrorMessage)(status);
  fn<void (*)(OrtStatus*)>(ReleaseStatus)(status);
  return msg.empty() ? "ONNX Runtime error" : msg;
}

OrtEnv* env = nullptr;
}  // namespace ort

namespace {

uint64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

TRITONSERVER_Error* error(int code, const std::string& msg) { return TRITONSERVER_ErrorNew(code, msg.c_str()); }

// A Triton error -> its message (and the error freed); empty when the call succeeded.
std::string take(TRITONSERVER_Error* err) {
  if (err == nullptr) return "";
  std::string msg = TRITONSERVER_ErrorMessage(err);
  TRITONSERVER_ErrorDelete(err);
  return msg;
}

void ignore(TRITONSERVER_Error* err) {  // a bookkeeping call whose failure changes nothing for the client
  if (err != nullptr) TRITONSERVER_ErrorDelete(err);
}

template <typename T>
void release(ort::Slot slot, T* object) {
  if (object != nullptr) ort::fn<void (*)(T*)>(slot)(object);
}

// The string value of parameter `key` of a model config ("parameters":{"key":{"string_value":"..."}}),
// or `fallback`.
std::string parameter(const rapidjson::Document& config, const char* key, const std::string& fallback) {
  if (!config.IsObject() || !config.HasMember("parameters")) return fallback;
  const rapidjson::Value& params = config["parameters"];
  if (!params.IsObject() || !params.HasMember(key)) return fallback;
  const rapidjson::Value& entry = params[key];
  if (!entry.IsObject() || !entry.HasMember("string_value") || !entry["string_value"].IsString()) return fallback;
  return entry["string_value"].GetString();
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string shape_text(const int64_t* shape, uint32_t dims) {
  std::string s = "[";
  for (uint32_t i = 0; i < dims; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct ModelState {
  std::string onnx_path;
  std::vector<std::string> inputs;   // image, calibration, wedge
  std::vector<std::string> outputs;
  std::vector<const char*> input_names, output_names;  // the same, as ONNX Runtime's Run takes them
  int threads = 1;
};

struct InstanceState {
  TRITONBACKEND_ModelInstance* instance = nullptr;
  ModelState* model = nullptr;
  OrtSession* session = nullptr;
  OrtMemoryInfo* cpu = nullptr;
  std::vector<float> image, calibration, wedge;  // the batch fed to ONNX Runtime, reused between calls
  ~InstanceState() {
    release(ort::ReleaseSession, session);
    release(ort::ReleaseMemoryInfo, cpu);
  }
};

// One request's captures, copied out of Triton's buffers; `problem` says why it cannot be run.
struct Pending {
  TRITONBACKEND_Request* request = nullptr;
  int64_t rows = 0;
  std::string problem;
};

// Copy an input's buffers (CPU memory) to `dst`; an error message, or empty.
std::string copy_input(TRITONBACKEND_Input* input, uint64_t byte_size, uint32_t buffers, float* dst) {
  char* out = reinterpret_cast<char*>(dst);
  uint64_t copied = 0;
  for (uint32_t b = 0; b < buffers; ++b) {
    const void* data = nullptr;
    uint64_t size = 0;
    int mem = kMemCpu;
    int64_t mem_id = 0;
    std::string msg = take(TRITONBACKEND_InputBuffer(input, b, &data, &size, &mem, &mem_id));
    if (!msg.empty()) return msg;
    if (mem == kMemGpu) return "GPU memory inputs are not supported by this CPU backend";
    if (copied + size > byte_size) return "input buffers larger than the declared size";
    std::memcpy(out + copied, data, size);
    copied += size;
  }
  return copied == byte_size ? "" : "input buffers smaller than the declared size";
}

// Read an input: its shape, appended to `dst`.
std::string read_input(TRITONBACKEND_Request* request, const std::string& name, std::vector<float>& dst,
                       std::vector<int64_t>* shape_out) {
  TRITONBACKEND_Input* input = nullptr;
  std::string missing = take(TRITONBACKEND_RequestInput(request, name.c_str(), &input));
  if (!missing.empty()) return name + ": not sent";
  const char* input_name = nullptr;
  int datatype = 0;
  const int64_t* shape = nullptr;
  uint32_t dims = 0, buffers = 0;
  uint64_t byte_size = 0;
  std::string msg = take(
      TRITONBACKEND_InputProperties(input, &input_name, &datatype, &shape, &dims, &byte_size, &buffers));
  if (!msg.empty()) return name + ": " + msg;
  if (datatype != kTypeFp32) return name + ".dtype: expected FP32";
  if (dims < 1) return name + ".shape: expected a batch dimension, got []";
  int64_t count = 1;
  for (uint32_t i = 0; i < dims; ++i) count *= shape[i];
  if (count < 0 || byte_size != static_cast<uint64_t>(count) * sizeof(float))
    return name + ": " + std::to_string(byte_size) + " bytes for shape " + shape_text(shape, dims);
  shape_out->assign(shape, shape + dims);
  size_t at = dst.size();
  dst.resize(at + static_cast<size_t>(count));
  msg = copy_input(input, byte_size, buffers, dst.data() + at);
  return msg.empty() ? "" : name + ": " + msg;
}

void send_error(TRITONBACKEND_Request* request, int code, const std::string& msg) {
  TRITONBACKEND_Response* response = nullptr;
  if (!take(TRITONBACKEND_ResponseNew(&response, request)).empty()) return;
  TRITONSERVER_Error* reason = error(code, msg);
  ignore(TRITONBACKEND_ResponseSend(response, kResponseFinal, reason));
  TRITONSERVER_ErrorDelete(reason);
}

}  // namespace

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend*) {
  uint32_t major = 0, minor = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_ApiVersion(&major, &minor);
  if (err != nullptr) return err;
  if (major != kApiMajor)
    return error(kUnsupported, "alloynet_ort: built for Triton backend API 1.x, the server has " +
                                   std::to_string(major) + "." + std::to_string(minor));
  const OrtApiBase* base = OrtGetApiBase();
  ort::table = base == nullptr ? nullptr : static_cast<const void* const*>(base->GetApi(ort::kApiVersion));
  if (ort::table == nullptr) return error(kUnsupported, "alloynet_ort: ONNX Runtime offers no C API version 1");
  // The slots above are right only if the table is laid out as they say: a status made and read back.
  OrtStatus* probe = ort::fn<OrtStatus* (*)(int, const char*)>(ort::CreateStatus)(ort::kErrorInvalidArgument,
                                                                                   "alloynet probe");
  bool ok = probe != nullptr && ort::fn<int (*)(const OrtStatus*)>(ort::GetErrorCode)(probe) ==
                                    ort::kErrorInvalidArgument;
  if (!ok || ort::take(probe) != "alloynet probe")
    return error(kUnsupported, std::string("alloynet_ort: ONNX Runtime ") + base->GetVersionString() +
                                   " does not lay out its C API as this backend expects");
  std::string msg = ort::take(ort::fn<OrtStatus* (*)(int, const char*, OrtEnv**)>(ort::CreateEnv)(
      ort::kLogWarning, "alloynet", &ort::env));
  if (!msg.empty()) return error(kInternal, "alloynet_ort: ONNX Runtime environment: " + msg);
  return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_Finalize(TRITONBACKEND_Backend*) {
  release(ort::ReleaseEnv, ort::env);
  ort::env = nullptr;
  return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  const char* location = nullptr;
  int artifact = 0;
  uint64_t version = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelRepository(model, &artifact, &location);
  if (err == nullptr) err = TRITONBACKEND_ModelVersion(model, &version);
  if (err != nullptr) return err;
  if (artifact != kArtifactFilesystem) return error(kUnsupported, "alloynet_ort: models must be on a filesystem");
  TRITONSERVER_Message* config = nullptr;
  err = TRITONBACKEND_ModelConfig(model, 1, &config);
  if (err != nullptr) return err;
  const char* base = nullptr;
  size_t size = 0;
  err = TRITONSERVER_MessageSerializeToJson(config, &base, &size);
  rapidjson::Document json;
  if (err == nullptr) json.Parse(base, size);
  TRITONSERVER_MessageDelete(config);
  if (err != nullptr) return err;
  if (json.HasParseError() || !json.IsObject())
    return error(kInternal, "alloynet_ort: the model config Triton gave is not a JSON object");

  auto* state = new ModelState();
  state->onnx_path = std::string(location) + "/" + std::to_string(version) + "/model.onnx";
  state->inputs = split(parameter(json, "input_names", ""));
  state->outputs = split(parameter(json, "output_names", ""));
  state->threads = std::max(1, std::atoi(parameter(json, "intra_op_threads", "1").c_str()));
  if (state->inputs.size() != 3 || state->outputs.empty()) {
    delete state;
    return error(kInvalidArg, "alloynet_ort: config.pbtxt needs parameters input_names (image, calibration, wedge) "
                              "and output_names (comma-separated)");
  }
  for (const auto& name : state->inputs) state->input_names.push_back(name.c_str());
  for (const auto& name : state->outputs) state->output_names.push_back(name.c_str());
  return TRITONBACKEND_ModelSetState(model, state);
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelState(model, &state);
  if (err != nullptr) return err;
  delete static_cast<ModelState*>(state);
  return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  TRITONBACKEND_Model* model = nullptr;
  void* model_state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceModel(instance, &model);
  if (err == nullptr) err = TRITONBACKEND_ModelState(model, &model_state);
  if (err != nullptr) return err;
  auto* state = new InstanceState();
  state->instance = instance;
  state->model = static_cast<ModelState*>(model_state);

  OrtSessionOptions* opts = nullptr;
  std::string msg = ort::take(ort::fn<OrtStatus* (*)(OrtSessionOptions**)>(ort::CreateSessionOptions)(&opts));
  if (msg.empty())
    msg = ort::take(ort::fn<OrtStatus* (*)(OrtSessionOptions*, int)>(ort::SetIntraOpNumThreads)(
        opts, state->model->threads));
  if (msg.empty())
    msg = ort::take(ort::fn<OrtStatus* (*)(OrtSessionOptions*, int)>(ort::SetInterOpNumThreads)(opts, 1));
  if (msg.empty())
    msg = ort::take(ort::fn<OrtStatus* (*)(const OrtEnv*, const char*, const OrtSessionOptions*, OrtSession**)>(
        ort::CreateSession)(ort::env, state->model->onnx_path.c_str(), opts, &state->session));
  release(ort::ReleaseSessionOptions, opts);
  if (msg.empty())
    msg = ort::take(ort::fn<OrtStatus* (*)(int, int, OrtMemoryInfo**)>(ort::CreateCpuMemoryInfo)(
        ort::kArenaAllocator, ort::kMemTypeDefault, &state->cpu));
  if (msg.empty()) {
    size_t n_in = 0, n_out = 0;
    msg = ort::take(ort::fn<OrtStatus* (*)(const OrtSession*, size_t*)>(ort::SessionGetInputCount)(state->session,
                                                                                                   &n_in));
    if (msg.empty())
      msg = ort::take(ort::fn<OrtStatus* (*)(const OrtSession*, size_t*)>(ort::SessionGetOutputCount)(
          state->session, &n_out));
    if (msg.empty() && (n_in != state->model->inputs.size() || n_out != state->model->outputs.size()))
      msg = "the graph has " + std::to_string(n_in) + " inputs and " + std::to_string(n_out) +
            " outputs, config.pbtxt names " + std::to_string(state->model->inputs.size()) + " and " +
            std::to_string(state->model->outputs.size());
  }
  if (!msg.empty()) {
    std::string path = state->model->onnx_path;
    delete state;
    return error(kInternal, "alloynet_ort: " + path + ": " + msg);
  }
  return TRITONBACKEND_ModelInstanceSetState(instance, state);
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  void* raw = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &raw);
  if (err != nullptr) return err;
  auto* state = static_cast<InstanceState*>(raw);
  if (state == nullptr) return nullptr;  // Triton finalizes an instance whose initialization failed, too
  delete state;
  return nullptr;
}

// Every request of the batch is read on its own: one whose tensors Triton's config cannot catch (a missing
// input, shapes that disagree) is answered INVALID_ARG; the others are run together in one ONNX Runtime call,
// bad captures included: the graph names them by their status.
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests, const uint32_t count) {
  uint64_t exec_start = now_ns();
  void* raw = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &raw);
  if (err != nullptr) return err;  // Triton answers and releases the requests
  auto* st = static_cast<InstanceState*>(raw);
  const ModelState& m = *st->model;
  st->image.clear();
  st->calibration.clear();
  st->wedge.clear();
  std::vector<Pending> pending(count);
  std::vector<int64_t> item_shape;  // [B, C, H, W] of the batch's first good request: the others match it
  int64_t total = 0;

  for (uint32_t r = 0; r < count; ++r) {
    Pending& p = pending[r];
    p.request = requests[r];
    size_t img_at = st->image.size(), cal_at = st->calibration.size(), wedge_at = st->wedge.size();
    std::vector<int64_t> shape, cal_shape, wedge_shape;
    std::string problem = read_input(p.request, m.inputs[0], st->image, &shape);
    if (problem.empty()) problem = read_input(p.request, m.inputs[1], st->calibration, &cal_shape);
    if (problem.empty()) problem = read_input(p.request, m.inputs[2], st->wedge, &wedge_shape);
    if (problem.empty() && (shape.size() != 4 || shape[0] < 1))
      problem = std::string(shape.size() == 4 && shape[0] == 0 ? "empty batch: " : "") + m.inputs[0] +
                ".shape: expected [B, C, H, W] with B >= 1, got " +
                shape_text(shape.data(), static_cast<uint32_t>(shape.size()));
    const int64_t rows = problem.empty() ? shape[0] : 0;
    if (problem.empty() && cal_shape != std::vector<int64_t>{rows, shape[1], 2})
      problem = m.inputs[1] + ".shape: expected [" + std::to_string(rows) + ", " + std::to_string(shape[1]) +
                ", 2], got " + shape_text(cal_shape.data(), static_cast<uint32_t>(cal_shape.size()));
    if (problem.empty() && wedge_shape != std::vector<int64_t>{rows, 1})
      problem = m.inputs[2] + ".shape: expected [" + std::to_string(rows) + ", 1], got " +
                shape_text(wedge_shape.data(), static_cast<uint32_t>(wedge_shape.size()));
    if (problem.empty() && !item_shape.empty() && !std::equal(shape.begin() + 1, shape.end(), item_shape.begin() + 1))
      problem = m.inputs[0] + ".shape: " + shape_text(shape.data(), 4) + " differs from the batch's other captures";
    if (!problem.empty()) {  // nothing of this request goes into the batch
      p.problem = problem;
      st->image.resize(img_at);
      st->calibration.resize(cal_at);
      st->wedge.resize(wedge_at);
      continue;
    }
    p.rows = rows;
    total += rows;
    if (item_shape.empty()) item_shape = shape;
  }

  uint64_t compute_start = now_ns(), compute_end = compute_start;
  std::vector<OrtValue*> outputs(m.outputs.size(), nullptr);
  std::string failure;
  if (total > 0) {
    int64_t channels = item_shape[1];
    int64_t image_shape[4] = {total, channels, item_shape[2], item_shape[3]};
    int64_t cal_shape[3] = {total, channels, 2};
    int64_t wedge_shape[2] = {total, 1};
    using MakeTensor = OrtStatus* (*)(const OrtMemoryInfo*, void*, size_t, const int64_t*, size_t, int, OrtValue**);
    auto make = ort::fn<MakeTensor>(ort::CreateTensorWithDataAsOrtValue);
    OrtValue* in[3] = {nullptr, nullptr, nullptr};
    failure = ort::take(make(st->cpu, st->image.data(), st->image.size() * sizeof(float), image_shape, 4,
                             ort::kTensorFloat, &in[0]));
    if (failure.empty())
      failure = ort::take(make(st->cpu, st->calibration.data(), st->calibration.size() * sizeof(float), cal_shape, 3,
                               ort::kTensorFloat, &in[1]));
    if (failure.empty())
      failure = ort::take(make(st->cpu, st->wedge.data(), st->wedge.size() * sizeof(float), wedge_shape, 2,
                               ort::kTensorFloat, &in[2]));
    if (failure.empty()) {
      using RunFn = OrtStatus* (*)(OrtSession*, const void*, const char* const*, const OrtValue* const*, size_t,
                                   const char* const*, size_t, OrtValue**);
      compute_start = now_ns();
      failure = ort::take(ort::fn<RunFn>(ort::Run)(st->session, nullptr, m.input_names.data(), in, 3,
                                                   m.output_names.data(), m.output_names.size(), outputs.data()));
      compute_end = now_ns();
    }
    for (OrtValue* v : in) release(ort::ReleaseValue, v);
  }

  // Each output's shape and data, to be cut into the requests' rows.
  std::vector<std::vector<int64_t>> out_shapes(outputs.size());
  std::vector<const float*> out_data(outputs.size(), nullptr);
  for (size_t o = 0; total > 0 && failure.empty() && o < outputs.size(); ++o) {
    OrtTensorTypeAndShapeInfo* info = nullptr;
    size_t dims = 0;
    failure = ort::take(ort::fn<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(
        ort::GetTensorTypeAndShape)(outputs[o], &info));
    if (failure.empty())
      failure = ort::take(ort::fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(
          ort::GetDimensionsCount)(info, &dims));
    if (failure.empty()) {
      out_shapes[o].resize(dims);
      failure = ort::take(ort::fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(
          ort::GetDimensions)(info, out_shapes[o].data(), dims));
    }
    release(ort::ReleaseTensorTypeAndShapeInfo, info);
    void* data = nullptr;
    if (failure.empty())
      failure = ort::take(ort::fn<OrtStatus* (*)(OrtValue*, void**)>(ort::GetTensorMutableData)(outputs[o], &data));
    if (failure.empty() && (out_shapes[o].empty() || out_shapes[o][0] != total))
      failure = "output " + m.outputs[o] + " has " + std::to_string(out_shapes[o].empty() ? 0 : out_shapes[o][0]) +
                " rows for " + std::to_string(total) + " captures";
    out_data[o] = static_cast<const float*>(data);
  }

  int64_t start = 0;
  for (Pending& p : pending) {
    bool success = false;
    if (!p.problem.empty()) {
      send_error(p.request, kInvalidArg, p.problem);
    } else if (!failure.empty()) {
      send_error(p.request, kInternal, "inference failed: " + failure);
    } else {
      TRITONBACKEND_Response* response = nullptr;
      std::string msg;
      err = TRITONBACKEND_ResponseNew(&response, p.request);
      for (size_t o = 0; err == nullptr && o < outputs.size(); ++o) {
        std::vector<int64_t> shape = out_shapes[o];
        int64_t per_row = 1;
        for (size_t d = 1; d < shape.size(); ++d) per_row *= shape[d];
        shape[0] = p.rows;
        TRITONBACKEND_Output* output = nullptr;
        err = TRITONBACKEND_ResponseOutput(response, &output, m.outputs[o].c_str(), kTypeFp32, shape.data(),
                                           static_cast<uint32_t>(shape.size()));
        if (err != nullptr) break;
        void* buffer = nullptr;
        int mem = kMemCpu;
        int64_t mem_id = 0;
        uint64_t bytes = static_cast<uint64_t>(p.rows * per_row) * sizeof(float);
        err = TRITONBACKEND_OutputBuffer(output, &buffer, bytes, &mem, &mem_id);
        if (err == nullptr && mem == kMemGpu) err = error(kInternal, "Triton gave a GPU output buffer to a CPU backend");
        if (err == nullptr) std::memcpy(buffer, out_data[o] + start * per_row, bytes);
      }
      if (err == nullptr) {
        err = TRITONBACKEND_ResponseSend(response, kResponseFinal, nullptr);
        success = err == nullptr;
      } else if (response != nullptr) {
        ignore(TRITONBACKEND_ResponseSend(response, kResponseFinal, err));
      }
      if (err != nullptr) TRITONSERVER_ErrorDelete(err);
      err = nullptr;
      start += p.rows;
    }
    uint64_t exec_end = now_ns();
    ignore(TRITONBACKEND_ModelInstanceReportStatistics(instance, p.request, success, exec_start, compute_start,
                                                       compute_end, exec_end));
    ignore(TRITONBACKEND_RequestRelease(p.request, kReleaseAll));
  }
  for (OrtValue* v : outputs) release(ort::ReleaseValue, v);
  if (total > 0) {
    ignore(TRITONBACKEND_ModelInstanceReportBatchStatistics(instance, static_cast<uint64_t>(total), exec_start,
                                                            compute_start, compute_end, now_ns()));
  }
  return nullptr;
}

}  // extern "C"
