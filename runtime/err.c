/* Error codes and their messages, generated from PCR_ERRNO_MAP. */
#include "pcrun.h"

const char *pcr_strerror(int code) {
  switch (code) {
  case PCR_OK: return "success";
#define PCR_ERR_MSG(name, c, msg) case PCR_##name: return msg;
  PCR_ERRNO_MAP(PCR_ERR_MSG)
#undef PCR_ERR_MSG
  default: return "unknown error";
  }
}

const char *pcr_err_name(int code) {
  switch (code) {
  case PCR_OK: return "PCR_OK";
#define PCR_ERR_NAME(name, c, msg) case PCR_##name: return "PCR_" #name;
  PCR_ERRNO_MAP(PCR_ERR_NAME)
#undef PCR_ERR_NAME
  default: return "PCR_UNKNOWN";
  }
}

const char *pcr_version(void) { return PCR_VERSION_STRING; }
