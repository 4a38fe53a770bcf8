// Fault points (core/fault.h): spec parsing and its errors, counting, and that an armed point
// kills the process at exactly the N-th time it is reached (in a forked child), not before.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include "core/fault.h"

namespace meridian::fault {
namespace {

TEST(FaultPoint, UnarmedPointsDoNothingAndCountNothing) {
  disarm_all();
  MERIDIAN_FAULT_POINT("test.nothing");
  EXPECT_EQ(hits("test.nothing"), 0);
}

TEST(FaultPoint, MalformedSpecsAreOneLineErrorsAndArmNothing) {
  disarm_all();
  for (const char* spec : {"a@0", "a@x", "a@-1", "a:explode", "@3", "a@2:kill,b:boom"}) {
    const Status st = arm(spec);
    EXPECT_FALSE(st.is_ok()) << spec;
    EXPECT_NE(st.message().find("fault spec"), std::string::npos) << st.message();
    EXPECT_FALSE(st.hint().empty());
  }
  MERIDIAN_FAULT_POINT("a");  // nothing of the bad specs was armed
  EXPECT_EQ(hits("a"), 0);
}

TEST(FaultPoint, CountsHitsOfArmedPointsOnly) {
  disarm_all();
  ASSERT_TRUE(arm("test.counted@100:hang, ,test.other@5").is_ok());
  for (int i = 0; i < 7; ++i) MERIDIAN_FAULT_POINT("test.counted");
  MERIDIAN_FAULT_POINT("test.unarmed");
  EXPECT_EQ(hits("test.counted"), 7);
  EXPECT_EQ(hits("test.other"), 0);
  EXPECT_EQ(hits("test.unarmed"), 0);
  disarm_all();
}

TEST(FaultPoint, KillsAtExactlyTheNthHit) {
  disarm_all();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(pipe_fds[0]);
    if (!arm("test.kill@3").is_ok()) ::_exit(3);
    for (char i = 1; i <= 5; ++i) {
      MERIDIAN_FAULT_POINT("test.kill");
      if (::write(pipe_fds[1], &i, 1) != 1) ::_exit(4);  // survived hit i
    }
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  char survived[8] = {};
  const ssize_t n = ::read(pipe_fds[0], survived, sizeof(survived));
  ::close(pipe_fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_EQ(n, 2);  // hits 1 and 2 passed, the third killed it
}

}  // namespace
}  // namespace meridian::fault
