// safetensors: writer streams the header and every tensor straight to "<path>.tmp"; reader
// validates the whole header against the file before it exposes a single tensor view.
//
// Validation order (each step assumes the previous ones passed):
//   1. at least 8 bytes; header length N within a sane cap and within the file;
//   2. the header is a JSON object; `__metadata__` (optional) maps strings to strings;
//   3. every other entry has a known dtype, a shape of non-negative integers, data_offsets
//      [begin, end] with begin <= end and end - begin == numel * dtype_size (no overflow);
//   4. the tensors, sorted by begin, tile the data section exactly: no overlap, no gap, no
//      bytes past the last tensor, and no tensor past the end of the file (truncation).
// This is the same contract as the reference implementation's `validate`, with messages that
// say which file and which tensor.
#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/assert.h"
#include "core/fault.h"

namespace meridian::io {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

// The reference library refuses headers above 100 MB; a larger value means a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr size_t kHeaderAlignment = 8;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};

const DTypeInfo& info(DType d) {
  for (const auto& i : kDTypes)
    if (i.dtype == d) return i;
  MERIDIAN_ASSERT(false, "unknown DType {}", static_cast<int>(d));
}

std::string errno_text() { return std::strerror(errno); }

// Product of the shape, or false on overflow / negative dims (the writer asserts, the reader
// reports).
bool checked_numel(const std::vector<int64_t>& shape, uint64_t* numel) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) return false;
    n *= static_cast<uint64_t>(d);
  }
  *numel = n;
  return true;
}

// Compact JSON exactly as the reference library serializes it: `__metadata__` first, then the
// tensors by name, fields in the order dtype, shape, data_offsets; padded with spaces so that
// the data section starts 8-byte aligned.
std::string build_header(const std::map<std::string, std::string>& metadata,
                         const std::vector<std::pair<std::string, std::string>>& tensor_fields) {
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":";
    h += json(metadata).dump();
    first = false;
  }
  for (const auto& [name, fields] : tensor_fields) {
    if (!first) h += ',';
    first = false;
    h += json(name).dump();
    h += ':';
    h += fields;
  }
  h += '}';
  h.append((kHeaderAlignment - h.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
  return h;
}

class TmpFile {
 public:
  explicit TmpFile(std::string path) : path_(std::move(path)) {}
  ~TmpFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  Status create() {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return Status::error(path_ + ": cannot create (" + errno_text() + ")", "check that the directory exists and is writable");
    return Status::ok();
  }
  Status write_all(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, std::min<size_t>(size, 1u << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::error(path_ + ": write failed (" + errno_text() + ")", "check free disk space");
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
    return Status::ok();
  }
  Status sync_and_close() {
    if (::fsync(fd_) != 0) return Status::error(path_ + ": fsync failed (" + errno_text() + ")");
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return Status::error(path_ + ": close failed (" + errno_text() + ")");
    return Status::ok();
  }
  void committed() { committed_ = true; }

 private:
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

// A name as a one-line JSON string literal, so that odd names cannot break a message.
std::string quoted(const std::string& name) { return json(name).dump(-1, ' ', false, json::error_handler_t::replace); }

Status defect(const std::string& origin, const std::string& what, const std::string& hint) {
  return Status::error(origin + ": " + what, hint);
}

const char* const kCorruptHint = "the file is corrupt or not a safetensors file; restore it from a good checkpoint";

// Reads a non-negative JSON integer that fits in uint64.
bool as_u64(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

struct Parsed {
  TensorView view;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Step 3 for one entry.
Status parse_entry(const std::string& origin, const std::string& name, const json& entry, Parsed* out) {
  const std::string tensor = "tensor " + quoted(name);
  if (!entry.is_object()) return defect(origin, tensor + ": entry is not a JSON object", kCorruptHint);
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || shape_it == entry.end() || offsets_it == entry.end())
    return defect(origin, tensor + ": entry needs dtype, shape and data_offsets", kCorruptHint);
  if (!dtype_it->is_string()) return defect(origin, tensor + ": dtype is not a string", kCorruptHint);
  auto dtype = dtype_from_name(dtype_it->get<std::string>());
  if (!dtype) return defect(origin, tensor + ": " + dtype.status().message(), dtype.status().hint());

  if (!shape_it->is_array()) return defect(origin, tensor + ": shape is not an array", kCorruptHint);
  std::vector<int64_t> shape;
  for (const auto& d : *shape_it) {
    uint64_t v = 0;
    if (!as_u64(d, &v) || v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return defect(origin, tensor + ": shape " + shape_it->dump() + " has an entry that is not a non-negative integer", kCorruptHint);
    shape.push_back(static_cast<int64_t>(v));
  }
  uint64_t numel = 0;
  const size_t elem = dtype_size(*dtype);
  if (!checked_numel(shape, &numel) || numel > std::numeric_limits<uint64_t>::max() / elem ||
      numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return defect(origin, tensor + ": shape " + shape_it->dump() + " overflows 64 bits", kCorruptHint);
  const uint64_t nbytes = numel * elem;

  if (!offsets_it->is_array() || offsets_it->size() != 2)
    return defect(origin, tensor + ": data_offsets is not a [begin, end] pair", kCorruptHint);
  uint64_t begin = 0, end = 0;
  if (!as_u64((*offsets_it)[0], &begin) || !as_u64((*offsets_it)[1], &end))
    return defect(origin, tensor + ": data_offsets " + offsets_it->dump() + " are not non-negative integers", kCorruptHint);
  if (begin > end)
    return defect(origin, tensor + ": data_offsets " + offsets_it->dump() + " have begin > end", kCorruptHint);
  if (end - begin != nbytes)
    return defect(origin,
                  tensor + ": size mismatch: " + dtype_it->get<std::string>() + " " + shape_it->dump() + " needs " +
                      std::to_string(nbytes) + " bytes, data_offsets " + offsets_it->dump() + " span " +
                      std::to_string(end - begin),
                  kCorruptHint);
  out->view.name = name;
  out->view.dtype = *dtype;
  out->view.shape = std::move(shape);
  out->view.nbytes = static_cast<size_t>(nbytes);
  out->begin = begin;
  out->end = end;
  return Status::ok();
}

}  // namespace

const char* dtype_name(DType d) { return info(d).name; }

size_t dtype_size(DType d) { return info(d).size; }

Result<DType> dtype_from_name(const std::string& name) {
  for (const auto& i : kDTypes)
    if (name == i.name) return i.dtype;
  std::string known;
  for (const auto& i : kDTypes) known += std::string(known.empty() ? "" : ", ") + i.name;
  return Status::error("unknown dtype " + quoted(name), "this build reads " + known);
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  MERIDIAN_ASSERT(name != "__metadata__", "tensor name '__metadata__' is reserved");
  uint64_t numel = 0;
  MERIDIAN_ASSERT(checked_numel(shape, &numel), "tensor '{}': bad shape", name);
  MERIDIAN_ASSERT(numel * dtype_size(dtype) == nbytes, "tensor '{}': {} elements of {} bytes != nbytes {}", name,
                  numel, dtype_size(dtype), nbytes);
  MERIDIAN_ASSERT(data != nullptr || nbytes == 0, "tensor '{}': null data", name);
  for (const auto& e : entries_) MERIDIAN_ASSERT(e.name != name, "tensor '{}' added twice", name);
  entries_.push_back(Entry{name, dtype, std::move(shape), data, nbytes});
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

Status SafetensorsWriter::write(const std::string& path) const {
  // Offsets follow insertion order (the order the bytes are written); the header is by name.
  std::vector<std::pair<std::string, std::string>> fields;
  fields.reserve(entries_.size());
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    json shape = json::array();
    for (int64_t d : e.shape) shape.push_back(d);
    std::string f = std::string("{\"dtype\":\"") + dtype_name(e.dtype) + "\",\"shape\":" + shape.dump() +
                    ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + e.nbytes) + "]}";
    fields.emplace_back(e.name, std::move(f));
    offset += e.nbytes;
  }
  std::sort(fields.begin(), fields.end());
  std::string header;
  try {
    header = build_header(metadata_, fields);
  } catch (const json::exception& e) {  // a name or metadata string that is not valid UTF-8
    return Status::error(path + ": cannot write header: " + e.what(), "tensor names and metadata must be valid UTF-8");
  }

  unsigned char length_le[8];
  const uint64_t header_len = header.size();
  std::memcpy(length_le, &header_len, sizeof(length_le));

  const std::string tmp = path + ".tmp";
  TmpFile file(tmp);
  MERIDIAN_RETURN_IF_ERROR(file.create());
  MERIDIAN_RETURN_IF_ERROR(file.write_all(length_le, sizeof(length_le)));
  MERIDIAN_RETURN_IF_ERROR(file.write_all(header.data(), header.size()));
  for (const auto& e : entries_) MERIDIAN_RETURN_IF_ERROR(file.write_all(e.data, e.nbytes));
  MERIDIAN_FAULT_POINT("safetensors.written");
  MERIDIAN_RETURN_IF_ERROR(file.sync_and_close());
  MERIDIAN_FAULT_POINT("safetensors.synced");
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return Status::error(path + ": rename from " + tmp + " failed (" + errno_text() + ")");
  file.committed();
  return fsync_dir(std::filesystem::path(path).parent_path().string());
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto mapped = MappedFile::open(path);
  if (!mapped) return mapped.status();
  auto mapping = std::make_shared<MappedFile>(std::move(mapped.value()));
  auto parsed = parse_view(mapping->data(), mapping->size(), path);
  if (!parsed) return parsed.status();
  parsed->mapping_ = std::move(mapping);
  return parsed;
}

Result<SafetensorsFile> SafetensorsFile::parse(std::string bytes, const std::string& origin) {
  // The views point into the string's heap buffer, which a shared_ptr keeps in place.
  auto buffer = std::make_shared<std::string>(std::move(bytes));
  auto parsed = parse_view(reinterpret_cast<const unsigned char*>(buffer->data()), buffer->size(), origin);
  if (!parsed) return parsed.status();
  parsed->buffer_ = std::move(buffer);
  return parsed;
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorView& t, const std::string& n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

Result<SafetensorsFile> SafetensorsFile::parse_view(const unsigned char* data, size_t size, const std::string& origin) {
  // Step 1: the length prefix.
  if (size < 8)
    return defect(origin, "too short: " + std::to_string(size) + " bytes, a safetensors file starts with an 8-byte header length",
                  "the file is empty or was cut short; restore it from a good checkpoint");
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);
  if (header_len > kMaxHeaderBytes)
    return defect(origin, "bad header length: " + std::to_string(header_len) + " bytes (limit " +
                              std::to_string(kMaxHeaderBytes) + ")",
                  kCorruptHint);
  if (header_len > size - 8)
    return defect(origin, "bad header length: header says " + std::to_string(header_len) + " bytes, file has only " +
                              std::to_string(size - 8) + " after the length prefix",
                  "the file was cut short or is not a safetensors file; restore it from a good checkpoint");

  // Step 2: the JSON object.
  const char* header_begin = reinterpret_cast<const char*>(data + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const json::exception& e) {
    std::string why = e.what();  // "[json.exception.parse_error.101] parse error at line 1, column 5: ..."
    std::replace(why.begin(), why.end(), '\n', ' ');
    return defect(origin, "bad JSON header: " + why, kCorruptHint);
  }
  if (!header.is_object()) return defect(origin, "bad JSON header: not a JSON object", kCorruptHint);

  SafetensorsFile file;
  file.origin_ = origin;
  std::vector<Parsed> parsed;
  parsed.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return defect(origin, "__metadata__ is not a JSON object", kCorruptHint);
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) return defect(origin, "__metadata__ value of " + quoted(mk) + " is not a string", kCorruptHint);
        file.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    Parsed p;
    MERIDIAN_RETURN_IF_ERROR(parse_entry(origin, key, value, &p));
    parsed.push_back(std::move(p));
  }

  // Step 4: the tensors tile the data section exactly.
  const uint64_t data_size = size - 8 - header_len;
  uint64_t claimed = 0;
  for (const auto& p : parsed) claimed = std::max(claimed, p.end);
  if (claimed > data_size)
    return defect(origin, "truncated: header says " + std::to_string(claimed) + " bytes of tensor data, file has " +
                              std::to_string(data_size),
                  "the file was cut short (interrupted copy?); restore it from a good checkpoint");
  std::sort(parsed.begin(), parsed.end(),
            [](const Parsed& a, const Parsed& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;
  const Parsed* prev = nullptr;
  for (const auto& p : parsed) {
    if (p.begin < covered)
      return defect(origin,
                    "overlapping tensors: " + quoted(p.view.name) + " [" + std::to_string(p.begin) + ", " + std::to_string(p.end) +
                        ") starts inside " + (prev ? quoted(prev->view.name) : std::string("?")) + " (ends at " +
                        std::to_string(covered) + ")",
                    kCorruptHint);
    if (p.begin > covered)
      return defect(origin, "gap in data section: bytes [" + std::to_string(covered) + ", " + std::to_string(p.begin) +
                                ") belong to no tensor",
                    kCorruptHint);
    covered = p.end;
    prev = &p;
  }
  if (covered != data_size)
    return defect(origin, "data section not covered: tensors end at byte " + std::to_string(covered) + ", file has " +
                              std::to_string(data_size) + " bytes of tensor data",
                  "trailing bytes after the last tensor: the file is corrupt or was appended to; restore it from a good checkpoint");

  const unsigned char* data_section = data + 8 + header_len;
  file.tensors_.reserve(parsed.size());
  for (auto& p : parsed) {
    p.view.data = data_section + p.begin;
    file.tensors_.push_back(std::move(p.view));
  }
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  return file;
}

}  // namespace meridian::io
