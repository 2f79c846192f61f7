#pragma once
#define ZN_VERSION "0.1.0"
